#include <iostream>

#include "cli.h"

namespace patchcore::cli {

void add_update(CLI::App& app) {
  auto* cmd = app.add_subcommand("update", "add new normal images to a fitted model");
  struct State {
    std::string model, data, out;
    UpdateParams params;
    int threads = 0;
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--model", s->model, "model file")->required();
  cmd->add_option("--data", s->data,
                  "MVTec category folder (train/good is used) or a folder of normal images")
      ->required();
  cmd->add_option("--out", s->out, "model file to write (default: --model, replaced atomically)");
  cmd->add_option("--max-rows", s->params.max_rows, "add at most this many memory bank rows");
  cmd->add_option("--radius", s->params.radius,
                  "coverage radius (L2 in the coreset's projected space) for models written "
                  "before update existed; default: the model's own");
  cmd->add_option("--threads", s->threads, "0: all cores");
  cmd->callback([s] {
    const std::string out = s->out.empty() ? s->model : s->out;
    check_writable_target(out);
    const Callbacks cb = stderr_callbacks();
    Model model = Model::load(s->model, cb);
    model.set_threads(s->threads);
    const Dataset data = scan_dataset(s->data);
    std::vector<std::filesystem::path> images;
    for (const Sample& x : data.train) images.push_back(x.image);
    cb.log(LogLevel::info, "updating " + s->model + " with " + std::to_string(images.size()) +
                               " images from " + s->data);
    model.update(images, s->params, cb);
    model.save(out);
    cb.log(LogLevel::info, "wrote " + out);
    std::cout << model.info_json() << "\n";
  });
}

void add_merge(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "merge", "merge partial models (fit --shard I/K) into one: the coreset over their rows");
  struct State {
    std::vector<std::string> parts;
    std::string out;
    int threads = 0;
  };
  auto s = std::make_shared<State>();
  cmd->add_option("parts", s->parts, "partial model files")->required();
  cmd->add_option("--out", s->out, "model file to write")->required();
  cmd->add_option("--threads", s->threads, "0: all cores");
  cmd->callback([s] {
    check_writable_target(s->out);
    const Callbacks cb = stderr_callbacks();
    std::vector<Model> parts;
    for (const std::string& file : s->parts) {
      if (std::filesystem::is_directory(file))
        throw_bad_input(file, "is a folder; give the partial model files (fit --shard I/K)");
      parts.push_back(Model::load(file, cb));
      parts.back().set_threads(s->threads);
    }
    std::vector<const Model*> pointers;
    for (const Model& m : parts) pointers.push_back(&m);
    cb.log(LogLevel::info, "merging " + std::to_string(parts.size()) + " partial models");
    Model model = Model::merge(pointers, cb);
    model.set_threads(s->threads);
    model.save(s->out);
    cb.log(LogLevel::info, "wrote " + s->out);
    std::cout << model.info_json() << "\n";
  });
}

}  // namespace patchcore::cli
