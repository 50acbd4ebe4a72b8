#include <unistd.h>

#include <iostream>

#include "cli.h"

namespace patchcore::cli {

// Fails before hours of work when the model could not be written in the end.
void check_writable_target(const std::filesystem::path& file) {
  const std::filesystem::path dir =
      file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
  if (!std::filesystem::is_directory(dir))
    throw_bad_input(file.string(), "the folder " + dir.string() + " does not exist");
  if (::access(dir.c_str(), W_OK) != 0)
    throw_bad_input(file.string(), "the folder " + dir.string() + " is not writable");
  if (std::filesystem::is_directory(file))
    throw_bad_input(file.string(), "is a folder; give a file name for the model");
}

void add_fit(CLI::App& app) {
  auto* cmd = app.add_subcommand("fit", "fit a model on normal images");
  struct State {
    std::string data, out;
    FitOptions options;
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--data", s->data,
                  "MVTec category folder (train/good is used) or a folder of normal images")
      ->required();
  cmd->add_option("--out", s->out, "model file to write")->required();
  add_fit_options(*cmd, s->options);
  cmd->callback([s] {
    const Params params = resolve_fit_options(s->options);
    set_opencv_threads(params.threads);
    check_writable_target(s->out);
    const Dataset data = scan_dataset(s->data);
    std::vector<std::filesystem::path> images;
    for (const Sample& x : data.train) images.push_back(x.image);
    const Callbacks cb = stderr_callbacks();
    cb.log(LogLevel::info, "fitting on " + std::to_string(images.size()) + " images from " +
                               s->data + " (backbone " + params.backbone + ")");
    Model model = Model::fit(images, params, cb);
    model.save(s->out);
    cb.log(LogLevel::info, "wrote " + s->out);
    std::cout << model.info_json() << "\n";
  });
}

}  // namespace patchcore::cli
