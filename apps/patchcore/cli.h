// Shared pieces of the command-line tool: option sets, stderr logging, the verbs.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "patchcore/patchcore.h"

namespace patchcore::cli {

/// Options that shape a fit (shared by fit, demo and bench), applied after the preset.
struct FitOptions {
  Params params;
  std::string preset;  ///< "", "paper", "anomalib"
  std::string layers;  ///< comma-separated
  std::string embedding;
  std::string upsample;
  std::string resize;
  std::string intensity;
  std::string engine;
  std::string precision;
  std::map<std::string, CLI::Option*> given;  ///< option name -> option, to see what was set
};

/// Registers --backbone, --layers, --coreset-ratio, ... on a sub-command.
void add_fit_options(CLI::App& cmd, FitOptions& o);
/// Registers --engine (auto, dnnl, opencv) on a sub-command.
CLI::Option* add_engine_option(CLI::App& cmd, std::string& engine);
/// Registers --precision (auto, fp32, bf16) on a sub-command.
CLI::Option* add_precision_option(CLI::App& cmd, std::string& precision);
/// The preset's values, then the options the user gave explicitly.
Params resolve_fit_options(const FitOptions& o);

/// Log lines and progress to stderr (progress redrawn in place on a terminal).
Callbacks stderr_callbacks(bool quiet = false);

void add_fit(CLI::App& app);
void add_eval(CLI::App& app);
void add_predict(CLI::App& app);
void add_info(CLI::App& app);
void add_demo(CLI::App& app);
void add_bench(CLI::App& app);
void add_import(CLI::App& app);
void add_features(CLI::App& app);
void add_serve(CLI::App& app);
void add_update(CLI::App& app);
void add_merge(CLI::App& app);

/// Throws Error(bad_input) naming the file when it could not be written in the end (no
/// folder, not writable, a folder).
void check_writable_target(const std::filesystem::path& file);

/// Exit code a verb asks for when it ran but could not do all of it (e.g. skipped images).
inline int& exit_code() {
  static int code = 0;
  return code;
}

}  // namespace patchcore::cli
