#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"

namespace patchcore::cli {

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "show what a model file holds");
  struct Settings {
    std::string file;
    bool verify = false;
    std::string engine = "auto";
    std::string precision = to_string(Params{}.precision);
  };
  auto s = std::make_shared<Settings>();
  cmd->add_option("model", s->file, "model file")->required();
  cmd->add_flag("--verify", s->verify,
                "check every byte against its checksum and every value, and run the backbone "
                "once; exit 0 when sound, 3 naming the damaged part");
  add_engine_option(*cmd, s->engine);
  add_precision_option(*cmd, s->precision);
  cmd->callback([s] {
    Model model = Model::load(s->file);
    model.set_engine(engine_from_string(s->engine));
    model.set_precision(precision_from_string(s->precision));
    if (s->verify) {
      std::cout << s->file << ": " << model.verify() << "\n";
      return;
    }
    nlohmann::json j = nlohmann::json::parse(model.info_json());
    // A choice of this run on this machine, not of the model: what predict would run.
    j["backbone_run"] = {{"engine", model.backbone_engine()},
                         {"precision", model.backbone_precision()}};
    std::cout << j.dump(2) << "\n";
  });
}

}  // namespace patchcore::cli
