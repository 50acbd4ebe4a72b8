#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backbone.h"
#include "cli.h"
#include "error.h"
#include "image.h"
#include "keras_onnx.h"
#include "npy.h"

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

// The image as a [1, 3, h, w] network input, normalised by preprocess_into.
Tensor network_input(const cv::Mat& rgb, int image_size, Normalization norm) {
  if (image_size > 0) {
    Tensor t({1, 3, image_size, image_size});
    preprocess_into(rgb, Preprocess{image_size, 0, norm}, t.ptr());
    return t;
  }
  // Own size: preprocess_into works on squares, so the image goes into the corner of a square
  // canvas of its longer side (resizing a square to its own size is a copy) and is cut out again.
  const int h = rgb.rows, w = rgb.cols, side = std::max(h, w);
  cv::Mat canvas(side, side, CV_8UC3, cv::Scalar::all(0));
  rgb.copyTo(canvas(cv::Rect(0, 0, w, h)));
  std::vector<float> square(3 * static_cast<size_t>(side) * side);
  preprocess_into(canvas, Preprocess{side, 0, norm}, square.data());
  Tensor t({1, 3, h, w});
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < h; ++y)
      std::copy_n(square.data() + (static_cast<size_t>(c) * side + y) * side, w,
                  t.ptr() + (static_cast<size_t>(c) * h + y) * w);
  return t;
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
    std::string precision = "auto";
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
    std::vector<std::string> layers = split_layers(s->layers);
    const cv::Mat rgb = load_rgb(s->image);
    const int h = s->image_size > 0 ? s->image_size : rgb.rows;
    const int w = s->image_size > 0 ? s->image_size : rgb.cols;

    Normalization norm = Normalization::m11;
    std::vector<uint8_t> onnx;
    if (const auto info = builtin_backbone(s->backbone)) {
      if (layers.empty()) layers = info->default_layers;
      norm = info->normalization;
      // Keras graphs are converted for one input size: the image's own, possibly not square.
      const fs::path dir = backbone_dir() / s->backbone;
      if (!fs::is_regular_file(dir / "model.json")) {
        throw_bad_input(dir.string(), "built-in backbone '" + s->backbone +
                                          "' is not installed (run scripts/setup)");
      }
      onnx = keras_to_onnx(load_keras_model(dir), h, w, layers);
    } else {
      const BackboneInfo file = onnx_backbone_info(s->backbone);
      if (layers.empty()) layers = file.default_layers;
      if (layers.empty()) throw_usage("--layers is required with " + s->backbone);
      if (s->normalize.empty() && !file.has_normalization)
        throw_usage("--normalize is required with " + s->backbone);
      norm = file.normalization;
      onnx = build_backbone_graph(s->backbone, layers, 0).onnx;
    }
    if (!s->normalize.empty()) norm = normalization_from_string(s->normalize);

    const Tensor input = network_input(rgb, s->image_size, norm);
    const auto net = make_backbone(onnx, layers, s->threads, engine_from_string(s->engine),
                                   precision_from_string(s->precision));
    const std::vector<Tensor> maps = net->forward(input);

    std::error_code ec;
    fs::create_directories(s->out, ec);
    if (!fs::is_directory(s->out)) throw_bad_input(s->out, "cannot create the output folder");
    for (size_t i = 0; i < layers.size(); ++i) {
      std::string name = layers[i];
      for (char& c : name)
        if (c == '/' || c == '\\') c = '_';
      const fs::path file = fs::path(s->out) / (name + ".npy");
      write_npy(file, maps[i]);
      std::cout << nlohmann::json{{"layer", layers[i]},
                                  {"shape", maps[i].shape},
                                  {"file", file.string()}}
                       .dump()
                << "\n";
    }
  });
}

}  // namespace patchcore::cli
