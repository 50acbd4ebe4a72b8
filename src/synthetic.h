// A small generated data set in the MVTec AD layout: the demo's data and the tests' data.
#pragma once

#include <cstdint>
#include <filesystem>

namespace patchcore {

struct SyntheticParams {
  int size = 160;       ///< image side in pixels
  int n_train = 30;     ///< normal training images
  int n_test_good = 10; ///< normal test images
  int n_per_defect = 8; ///< per defect kind: "scratch", "spot", "stain"
  uint64_t seed = 1;
  /// Blue, green and red gains of the texture's grey (the default: a warm beige); another
  /// triple makes a new normal variant of the same weave (tests of Model::update).
  double tint[3] = {0.80, 0.90, 1.0};
};

/// Writes dir/train/good, dir/test/{good,scratch,spot,stain} and dir/ground_truth/<kind>/
/// <stem>_mask.png: a woven texture with random jitter, noise and lighting; defects painted on
/// top with their masks. Deterministic for a seed. Throws Error(bad_input) when dir cannot be
/// written.
void write_synthetic_dataset(const std::filesystem::path& dir, const SyntheticParams& p);

}  // namespace patchcore
