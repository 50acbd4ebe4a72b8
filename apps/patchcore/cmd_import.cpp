#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"

namespace patchcore::cli {

void add_import(CLI::App& app) {
  auto* cmd = app.add_subcommand("import",
                                 "convert downloaded pretrained weights into an ONNX "
                                 "backbone (nothing is downloaded)");
  cmd->require_subcommand(1);
  auto* tv = cmd->add_subcommand(
      "torchvision",
      "a torchvision ResNet / Wide ResNet state_dict (.pth) -> ONNX with outputs "
      "layer1..layer3 (layer4 with --with-layer4), defaults layer2,layer3, "
      "imagenet normalisation, 224");
  struct State {
    std::string arch, weights, out;
    bool layer4 = false;
  };
  auto s = std::make_shared<State>();
  std::string archs;
  for (const std::string& n : torchvision_arch_names()) archs += (archs.empty() ? "" : ", ") + n;
  tv->add_option("arch", s->arch, "architecture: " + archs)->required();
  tv->add_option("weights", s->weights, "the .pth file, e.g. wide_resnet50_2-95faca4d.pth")
      ->required();
  tv->add_option("--out", s->out, "ONNX file to write")->required();
  tv->add_flag("--with-layer4", s->layer4,
               "also convert layer4 (unused by the paper; makes the file ~2.5x larger)");
  tv->callback([s] {
    const std::string source = import_torchvision(s->arch, s->weights, s->out, s->layer4 ? 4 : 3);
    std::cout << nlohmann::json{{"out", s->out}, {"source", source}}.dump() << "\n";
  });
}

}  // namespace patchcore::cli
