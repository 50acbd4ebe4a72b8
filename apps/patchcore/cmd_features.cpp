#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli.h"

namespace fs = std::filesystem;

namespace patchcore::cli {

namespace {

std::vector<std::string> split_layers(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) throw_usage("empty layer name in --layers '" + s + "'");
    out.push_back(item);
  }
  return out;
}

}  // namespace

void add_features(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("features",
                         "write a backbone's raw feature maps for one image as DIR/<layer>.npy "
                         "(float32, NCHW)");
  struct State {
    std::string backbone = "inception_v3", layers, normalize, image, out;
    int image_size = 0, threads = 0;
    std::string engine = "auto";
    std::string precision = to_string(Params{}.precision);
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--backbone", s->backbone, "built-in name or ONNX file")->capture_default_str();
  cmd->add_option("--layers", s->layers, "comma-separated (default: the backbone's)");
  cmd->add_option("--normalize", s->normalize, "imagenet, m11 or unit (default: the backbone's)");
  cmd->add_option("--image-size", s->image_size,
                  "resize to S x S first (default: run at the image's own size)");
  cmd->add_option("--threads", s->threads, "0: all cores");
  add_engine_option(*cmd, s->engine);
  add_precision_option(*cmd, s->precision);
  cmd->add_option("image", s->image, "image file")->required();
  cmd->add_option("--out", s->out, "output folder")->required();
  cmd->callback([s] {
    if (s->image_size < 0) throw_usage("--image-size must be positive");
    set_opencv_threads(s->threads);
    const Image image = load_image(s->image);
    Params params;
    params.backbone = s->backbone;
    params.layers = split_layers(s->layers);
    params.normalization = s->normalize;
    params.threads = s->threads;
    params.engine = engine_from_string(s->engine);
    params.precision = precision_from_string(s->precision);
    // Without --image-size the network runs at the image's own size.
    FeatureExtractor net(params, s->image_size > 0 ? s->image_size : image.height,
                         s->image_size > 0 ? s->image_size : image.width);
    const std::vector<FeatureMap> maps = net.extract(image.view());

    std::error_code ec;
    fs::create_directories(s->out, ec);
    if (!fs::is_directory(s->out)) throw_bad_input(s->out, "cannot create the output folder");
    for (const FeatureMap& map : maps) {
      std::string name = map.layer;
      for (char& c : name)
        if (c == '/' || c == '\\') c = '_';
      const fs::path file = fs::path(s->out) / (name + ".npy");
      write_npy(file, map);
      std::cout << nlohmann::json{{"layer", map.layer},
                                  {"shape", map.shape},
                                  {"file", file.string()}}
                       .dump()
                << "\n";
    }
  });
}

}  // namespace patchcore::cli
