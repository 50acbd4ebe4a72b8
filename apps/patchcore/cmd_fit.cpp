#include <unistd.h>

#include <iostream>
#include <optional>
#include <sstream>

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

// "I/K" with 0 <= I < K.
Shard parse_shard(const std::string& text) {
  Shard shard;
  char slash = 0;
  std::istringstream in(text);
  if (!(in >> shard.index >> slash >> shard.count) || slash != '/' || !in.eof() ||
      shard.count < 1 || shard.index < 0 || shard.index >= shard.count)
    throw_usage("--shard must be I/K with 0 <= I < K (e.g. 0/4), got '" + text + "'");
  return shard;
}

void add_fit(CLI::App& app) {
  auto* cmd = app.add_subcommand("fit", "fit a model on normal images");
  struct State {
    std::string data, out, shard;
    int64_t max_memory = 0;
    FitOptions options;
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--data", s->data,
                  "MVTec category folder (train/good is used) or a folder of normal images")
      ->required();
  cmd->add_option("--out", s->out, "model file to write")->required();
  add_fit_options(*cmd, s->options);
  cmd->add_option("--max-memory", s->max_memory,
                  "bytes the patch features may take in memory (suffixes k, m, g: powers of "
                  "1024); beyond it they stream to a file beside --out. 0: 80 % of the "
                  "available memory")
      ->transform(CLI::AsSizeValue(false));
  cmd->add_option("--shard", s->shard,
                  "I/K: fit a partial model on every K-th image starting at I (0-based), for "
                  "`patchcore merge`");
  cmd->callback([s] {
    Params params = resolve_fit_options(s->options);
    params.max_memory = s->max_memory;
    set_opencv_threads(params.threads);
    check_writable_target(s->out);
    params.scratch_folder = std::filesystem::path(s->out).parent_path();
    std::optional<Shard> shard;
    if (!s->shard.empty()) shard = parse_shard(s->shard);
    const Dataset data = scan_dataset(s->data);
    std::vector<std::filesystem::path> images;
    for (const Sample& x : data.train) images.push_back(x.image);
    const Callbacks cb = stderr_callbacks();
    cb.log(LogLevel::info, "fitting on " + std::to_string(images.size()) + " images from " +
                               s->data + " (backbone " + params.backbone + ")");
    Model model =
        shard ? Model::fit_shard(images, params, *shard, cb) : Model::fit(images, params, cb);
    model.save(s->out);
    cb.log(LogLevel::info, "wrote " + s->out);
    std::cout << model.info_json() << "\n";
  });
}

}  // namespace patchcore::cli
