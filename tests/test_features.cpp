// The public FeatureExtractor (a backbone run on its own), write_npy of its maps, and the sgemm
// yardstick of benchmarks.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "backbone.h"
#include "image.h"
#include "npy.h"
#include "patchcore/patchcore.h"
#include "test_support.h"

namespace fs = std::filesystem;
using patchcore::testing::TempDir;

namespace {

class Features : public ::testing::Test {
 protected:
  void SetUp() override {
    if (patchcore::testing::built_backbones_dir().empty())
      GTEST_SKIP() << "build/backbones missing: run scripts/setup";
    params_.backbone = "mobilenet_v2";
    params_.threads = 2;
    // A smooth colour ramp, not square.
    image_.height = 72;
    image_.width = 96;
    image_.name = "ramp";
    for (int y = 0; y < image_.height; ++y)
      for (int x = 0; x < image_.width; ++x)
        for (int c = 0; c < 3; ++c)
          image_.pixels.push_back(static_cast<uint8_t>((x * 2 + y * (c + 1)) % 256));
  }
  patchcore::Params params_;
  patchcore::Image image_;
};

double max_relative_difference(const patchcore::FeatureMap& a, const patchcore::FeatureMap& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.values.size(); ++i) {
    diff = std::max(diff, std::abs(double{a.values[i]} - b.values[i]));
    scale = std::max(scale, std::abs(double{a.values[i]}));
  }
  return scale > 0 ? diff / scale : diff;
}

// At the image's own size (not square) the maps are the backbone's on the normalised pixels:
// the same as the module-level backbone run on the same input.
TEST_F(Features, OwnSizeMapsEqualTheBackbonesOnTheNormalisedImage) {
  params_.engine = patchcore::BackboneEngine::opencv;
  patchcore::FeatureExtractor net(params_, image_.height, image_.width);
  EXPECT_EQ(net.layers(),
            (std::vector<std::string>{"block_5_expand_relu", "block_10_expand_relu"}));
  EXPECT_EQ(net.normalization(), "m11");
  EXPECT_EQ(net.engine(), "opencv");
  EXPECT_GT(net.flops_per_image(), 0.0);
  const std::vector<patchcore::FeatureMap> maps = net.extract(image_.view());
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_EQ(maps[0].layer, "block_5_expand_relu");
  ASSERT_EQ(maps[0].shape.size(), 4u);
  EXPECT_EQ(maps[0].shape[0], 1);
  EXPECT_EQ(maps[0].shape[2], 9);  // stride 8 of 72 x 96
  EXPECT_EQ(maps[0].shape[3], 12);
  EXPECT_EQ(static_cast<int64_t>(maps[0].values.size()),
            maps[0].shape[1] * maps[0].shape[2] * maps[0].shape[3]);

  // m11 by hand, planar.
  std::vector<float> input(3 * 72 * 96);
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 72 * 96; ++i)
      input[static_cast<size_t>(c) * 72 * 96 + i] = image_.pixels[i * 3 + c] / 127.5f - 1.0f;
  const std::vector<patchcore::FeatureMap> by_hand = net.extract(input.data(), 1);
  for (size_t k = 0; k < maps.size(); ++k) {
    EXPECT_EQ(maps[k].shape, by_hand[k].shape);
    EXPECT_LT(max_relative_difference(maps[k], by_hand[k]), 1e-5) << maps[k].layer;
  }
}

// A square input resizes the image first, as fit does; both engines agree.
TEST_F(Features, SquareInputsResizeAndBothEnginesAgree) {
  params_.layers = {"block_3_expand_relu"};
  params_.precision = patchcore::Precision::fp32;  // bf16 would round far beyond 1e-4
  std::vector<std::vector<patchcore::FeatureMap>> out;
  for (auto e : {patchcore::BackboneEngine::dnnl, patchcore::BackboneEngine::opencv}) {
    params_.engine = e;
    patchcore::FeatureExtractor net(params_, 64, 64);
    out.push_back(net.extract(image_.view()));
  }
  ASSERT_EQ(out[0].size(), 1u);
  EXPECT_EQ(out[0][0].shape, (std::vector<int64_t>{1, 144, 16, 16}));
  // Float rounding differs between the engines' convolutions (measured 1.2e-5 here).
  EXPECT_LT(max_relative_difference(out[0][0], out[1][0]), 1e-4);

  // An image of another size on a non-square input has no single resize rule.
  patchcore::FeatureExtractor wide(params_, 64, 80);
  try {
    wide.extract(image_.view());
    FAIL();
  } catch (const patchcore::Error& e) {
    EXPECT_EQ(e.kind(), patchcore::ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("ramp"), std::string::npos) << e.what();
  }
  EXPECT_THROW(patchcore::FeatureExtractor(params_, 0, 64), patchcore::Error);
  params_.backbone = "no_such_backbone";
  EXPECT_THROW(patchcore::FeatureExtractor(params_, 64, 64), patchcore::Error);
}

TEST_F(Features, WriteNpyKeepsShapeAndValues) {
  TempDir tmp;
  patchcore::FeatureMap m{"layer", {1, 2, 3, 4}, {}};
  for (int i = 0; i < 24; ++i) m.values.push_back(0.5f * i - 3.0f);
  patchcore::write_npy(tmp / "layer.npy", m);
  const patchcore::Tensor t = patchcore::read_npy(tmp / "layer.npy");
  EXPECT_EQ(t.shape, m.shape);
  EXPECT_EQ(t.data, m.values);
  patchcore::testing::expect_bad_input_naming((tmp / "nowhere" / "x" / "l.npy").string(), [&] {
    patchcore::write_npy(tmp / "nowhere" / "x" / "l.npy", m);
  });
}

TEST(Sgemm, ReportsAPositiveRateAndLeavesTheThreadCount) {
  omp_set_num_threads(3);
  EXPECT_GT(patchcore::sgemm_gflops(1), 0.0);
  EXPECT_EQ(omp_get_max_threads(), 3);
}

}  // namespace
