#include <iostream>

#include "cli.h"

namespace patchcore::cli {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "show what a model file holds");
  auto file = std::make_shared<std::string>();
  auto verify = std::make_shared<bool>(false);
  cmd->add_option("model", *file, "model file")->required();
  cmd->add_flag("--verify", *verify,
                "check every byte against its checksum and every value, and run the backbone "
                "once; exit 0 when sound, 3 naming the damaged part");
  cmd->callback([file, verify] {
    Model model = Model::load(*file);
    if (*verify) {
      std::cout << *file << ": " << model.verify() << "\n";
    } else {
      std::cout << model.info_json() << "\n";
    }
  });
}

}  // namespace patchcore::cli
