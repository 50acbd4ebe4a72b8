#include <iostream>

#include "cli.h"

namespace patchcore::cli {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "show what a model file holds");
  auto file = std::make_shared<std::string>();
  cmd->add_option("model", *file, "model file")->required();
  cmd->callback([file] {
    Model model = Model::load(*file);
    std::cout << model.info_json() << "\n";
  });
}

}  // namespace patchcore::cli
