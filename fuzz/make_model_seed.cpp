// Writes the seed corpus of fuzz_model_file: a model fitted on four 48 x 48 synthetic images
// with MobileNetV2's first blocks at 32 x 32, small enough (~60 KB) for the fuzzer to mutate
// quickly. Needs the built-in backbones (PATCHCORE_BACKBONES or build/backbones).
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "patchcore/patchcore.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_model_seed CORPUS_DIR\n";
    return 2;
  }
  try {
    const fs::path out = argv[1];
    const fs::path data = out.parent_path() / "seed-data";
    patchcore::SyntheticParams sp;
    sp.size = 48;
    sp.n_train = 4;
    sp.n_test_good = 0;
    sp.n_per_defect = 0;
    patchcore::write_synthetic_dataset(data, sp);
    std::vector<fs::path> images;
    for (const auto& e : fs::directory_iterator(data / "train" / "good"))
      images.push_back(e.path());
    std::sort(images.begin(), images.end());
    patchcore::Params p;
    p.backbone = "mobilenet_v2";
    p.layers = {"block_1_expand_relu", "block_2_expand_relu"};
    p.image_size = 32;
    p.coreset_min = 16;
    p.threads = 1;
    p.holdout_fraction = 0.25;
    fs::create_directories(out);
    patchcore::Model::fit(images, p).save(out / "tiny.patchcore");
    fs::remove_all(data);
  } catch (const std::exception& e) {
    std::cerr << "fuzz_model_seed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
