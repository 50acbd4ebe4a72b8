#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"

namespace fs = std::filesystem;

namespace patchcore::cli {

void print_metrics_summary(const nlohmann::json& m, const fs::path& out);

void add_demo(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "demo", "generate a small textured data set with defects, fit, evaluate, print metrics");
  struct State {
    std::string out = "patchcore-demo";
    FitOptions options;
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--out", s->out, "folder for the data, the model and the evaluation")
      ->capture_default_str();
  add_fit_options(*cmd, s->options);
  cmd->callback([s] {
    const Callbacks cb = stderr_callbacks();
    const fs::path out = s->out;
    const fs::path data = out / "data";
    cb.log(LogLevel::info,
           "writing a synthetic data set (woven texture; scratch, spot and "
           "stain defects with masks) to " +
               data.string());
    fs::remove_all(data);
    write_synthetic_dataset(data, SyntheticParams{});
    const Params params = resolve_fit_options(s->options);
    set_opencv_threads(params.threads);
    const Dataset d = scan_dataset(data);
    std::vector<fs::path> images;
    for (const Sample& x : d.train) images.push_back(x.image);
    cb.log(LogLevel::info, "fitting on " + std::to_string(images.size()) +
                               " normal images (backbone " + params.backbone + ")");
    Model model = Model::fit(images, params, cb);
    const fs::path model_file = out / "model.patchcore";
    model.save(model_file);
    cb.log(LogLevel::info, "evaluating on " + std::to_string(d.test.size()) + " test images");
    EvalResult r = evaluate(model, d.test, EvalOptions{out / "eval", true}, cb);
    print_metrics_summary(nlohmann::json::parse(r.metrics_json), out / "eval");
    std::cout << "model:       " << model_file.string() << "\n";
  });
}

}  // namespace patchcore::cli
