#include <iostream>
#include <nlohmann/json.hpp>
#include <set>

#include "cli.h"

namespace fs = std::filesystem;

namespace patchcore::cli {

void add_predict(CLI::App& app) {
  auto* cmd = app.add_subcommand("predict", "score images: one JSON line per image on stdout");
  struct State {
    std::string model, out;
    std::vector<std::string> paths;
    std::optional<double> threshold;
    int threads = 0;
    std::string engine = "auto";
    std::string precision = to_string(Params{}.precision);
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--model", s->model, "model file")->required();
  cmd->add_option("paths", s->paths, "images or folders of images")->required();
  cmd->add_option("--out", s->out, "write heatmap overlays and masks here");
  cmd->add_option("--threshold", s->threshold, "image score threshold (default: the model's)");
  cmd->add_option("--threads", s->threads, "0: all cores");
  add_engine_option(*cmd, s->engine);
  add_precision_option(*cmd, s->precision);
  cmd->callback([s] {
    // Checked before the model loads: a missing path or an empty folder is a mistake to
    // report, not a run that prints nothing.
    std::vector<fs::path> images;
    for (const std::string& p : s->paths) {
      if (fs::is_directory(p)) {
        const std::vector<fs::path> found = list_images(p);
        if (found.empty())
          throw_bad_input(p,
                          "no images in this folder (looked for png, jpg, jpeg, bmp, tif, "
                          "tiff, webp)");
        images.insert(images.end(), found.begin(), found.end());
      } else if (!fs::exists(p)) {
        throw_bad_input(p, "no such file or folder");
      } else {
        images.emplace_back(p);
      }
    }
    const Callbacks cb = stderr_callbacks(true);
    Model model = Model::load(s->model, cb);
    model.set_threads(s->threads);
    set_opencv_threads(s->threads);
    model.set_engine(engine_from_string(s->engine));
    model.set_precision(precision_from_string(s->precision));
    if (s->threshold) {
      Calibration c = model.calibration();
      // Keep the pixel threshold's offset from the image threshold so the heatmap follows.
      c.pixel_threshold += *s->threshold - c.image_threshold;
      c.image_threshold = *s->threshold;
      c.source = "user";
      model.set_calibration(c);
    }
    if (!s->out.empty()) {
      std::error_code ec;
      fs::create_directories(s->out, ec);
      if (!fs::is_directory(s->out)) throw_bad_input(s->out, "cannot create the output folder");
    }
    // Images left out of the results could not be read (the library says why); other
    // warnings, e.g. a precision this CPU lacks, are not about images.
    size_t predicted = 0;
    const Params& params = model.params();
    std::set<std::string> used;
    const size_t bs = static_cast<size_t>(params.batch_size);
    for (size_t start = 0; start < images.size(); start += bs) {
      std::vector<fs::path> batch(images.begin() + start,
                                  images.begin() + std::min(images.size(), start + bs));
      const std::vector<Prediction> results = model.predict(batch, cb);
      predicted += results.size();
      for (const Prediction& p : results) {
        nlohmann::json j{{"path", p.path.string()},
                         {"score", p.score},
                         {"normalized_score", p.normalized_score},
                         {"label", p.anomalous ? "anomalous" : "normal"},
                         {"threshold", model.calibration().image_threshold}};
        if (!s->out.empty()) {
          std::string stem = p.path.stem().string();
          for (int i = 2; used.count(stem); ++i)
            stem = p.path.stem().string() + "-" + std::to_string(i);
          used.insert(stem);
          const Image image = load_image(p.path);
          const fs::path heat = fs::path(s->out) / (stem + ".png");
          const fs::path mask = fs::path(s->out) / (stem + "_mask.png");
          write_image(heat, heatmap_overlay(model, p, image.view()).view());
          write_image(mask, predicted_mask(model, p).view());
          j["heatmap"] = heat.string();
          j["mask"] = mask.string();
        }
        std::cout << j.dump() << "\n" << std::flush;
      }
    }
    if (const size_t skipped = images.size() - predicted; skipped > 0) {
      cb.log(LogLevel::warning, std::to_string(skipped) + " of " + std::to_string(images.size()) +
                                    " images could not be read (see above)");
      exit_code() = 3;
    }
  });
}

}  // namespace patchcore::cli
