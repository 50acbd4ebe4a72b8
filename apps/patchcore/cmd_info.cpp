#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"

namespace patchcore::cli {

namespace {

// One line on stdout: what was checked. Damage or a bad value throws (exit 3) before.
void verify(const std::string& file, const Model& model) {
  model.check_backbone();
  const nlohmann::json info = nlohmann::json::parse(model.info_json());
  const int version = info["format_version"].get<int>();
  const auto grid = info["grid"];
  const std::string shapes =
      "the backbone runs and gives the stored " + std::to_string(grid[0].get<int>()) + "x" +
      std::to_string(grid[1].get<int>()) + " grid of " +
      std::to_string(info["memory_bank"]["dim"].get<int>()) + "-dimensional patches";
  if (info.value("checksums", "") == "verified") {
    std::cout << file << ": ok: format version " << version
              << ", every byte matches its checksum, every value checked, " << shapes << "\n";
  } else {
    std::cout << file << ": ok, but format version " << version
              << " carries no checksums: damage inside the memory bank or a text entry cannot "
                 "be detected; every value checked, "
              << shapes << "\n";
  }
}

}  // namespace

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "show what a model file holds");
  auto file = std::make_shared<std::string>();
  auto check = std::make_shared<bool>(false);
  cmd->add_option("model", *file, "model file")->required();
  cmd->add_flag("--verify", *check,
                "check every byte against its checksum and every value, and run the backbone "
                "once; exit 0 when sound, 3 naming the damaged part");
  cmd->callback([file, check] {
    Model model = Model::load(*file);
    if (*check) {
      verify(*file, model);
    } else {
      std::cout << model.info_json() << "\n";
    }
  });
}

}  // namespace patchcore::cli
