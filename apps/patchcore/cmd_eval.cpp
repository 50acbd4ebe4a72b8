#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"

namespace patchcore::cli {

void print_metrics_summary(const nlohmann::json& m, const std::filesystem::path& out) {
  auto v = [](const nlohmann::json& x) {
    if (x.is_null()) return std::string("n/a");
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4f", x.get<double>());
    return std::string(buf);
  };
  std::cout << "image AUROC  " << v(m["image_auroc"]) << "\n"
            << "pixel AUROC  " << v(m["pixel_auroc"]) << "\n"
            << "AUPRO (0.3)  " << v(m["aupro"]) << "\n"
            << "image F1     " << v(m["image_f1"]) << " at threshold " << v(m["image_threshold"])
            << "\n"
            << "images       " << m["n_images"] << " (" << m["n_skipped"] << " skipped)\n";
  for (const auto& [kind, k] : m["per_kind"].items())
    if (k.contains("image_auroc"))
      std::cout << "  " << kind << ": image AUROC " << v(k["image_auroc"]) << " (" << k["n"]
                << " images)\n";
  std::cout << "metrics:     " << (out / "metrics.json").string() << "\n"
            << "predictions: " << (out / "predictions.csv").string() << "\n"
            << "report:      " << (out / "report.html").string() << "\n";
}

void add_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "evaluate a model on labelled test images (MVTec layout)");
  struct State {
    std::string model, data, out;
    int threads = 0;
    std::string engine = "auto";
    std::string precision = to_string(Params{}.precision);
    bool save_threshold = false, no_images = false;
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--model", s->model, "model file")->required();
  cmd->add_option("--data", s->data, "MVTec category folder (test/<kind>, ground_truth/<kind>)")
      ->required();
  cmd->add_option("--out", s->out, "output folder")->required();
  cmd->add_option("--threads", s->threads, "0: all cores");
  add_engine_option(*cmd, s->engine);
  add_precision_option(*cmd, s->precision);
  cmd->add_flag("--save-threshold", s->save_threshold,
                "store the F1-optimal thresholds found here in the model file");
  cmd->add_flag("--no-images", s->no_images, "skip the per-image overlays");
  cmd->callback([s] {
    const Callbacks cb = stderr_callbacks();
    Model model = Model::load(s->model, cb);
    model.set_threads(s->threads);
    set_opencv_threads(s->threads);
    model.set_engine(engine_from_string(s->engine));
    model.set_precision(precision_from_string(s->precision));
    EvalOptions o{s->out, !s->no_images};
    EvalResult r = evaluate(model, std::filesystem::path(s->data), o, cb);
    print_metrics_summary(nlohmann::json::parse(r.metrics_json), s->out);
    if (s->save_threshold) {
      if (!r.has_f1) throw_bad_input(s->data, "no F1-optimal threshold: both classes are needed");
      model.set_calibration(r.f1_calibration);
      model.save(s->model);
      cb.log(LogLevel::info, "stored threshold " +
                                 std::to_string(r.f1_calibration.image_threshold) + " in " +
                                 s->model);
    }
  });
}

}  // namespace patchcore::cli
