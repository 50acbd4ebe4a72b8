#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "patchcore/patchcore.h"
#include "threshold.h"

namespace patchcore {
namespace {

ErrorKind kind_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no Error thrown";
  return ErrorKind::internal;
}

// ---------------------------------------------------------------------------------------------
// normalize_score

TEST(NormalizeScore, ThresholdIsHalfAndClipped) {
  Calibration c;
  c.min_score = 0;
  c.max_score = 10;
  EXPECT_DOUBLE_EQ(normalize_score(4, 4, c), 0.5);
  EXPECT_DOUBLE_EQ(normalize_score(6, 4, c), 0.7);    // (6 - 4) / 10 + 0.5
  EXPECT_DOUBLE_EQ(normalize_score(1, 4, c), 0.2);    // (1 - 4) / 10 + 0.5
  EXPECT_DOUBLE_EQ(normalize_score(9.5, 4, c), 1.0);  // 1.05 clipped
  EXPECT_DOUBLE_EQ(normalize_score(-20, 4, c), 0.0);
}

TEST(NormalizeScore, ZeroRangeKeepsOnlyTheSide) {
  Calibration c;
  c.min_score = c.max_score = 3;
  EXPECT_DOUBLE_EQ(normalize_score(3.5, 3, c), 1.0);
  EXPECT_DOUBLE_EQ(normalize_score(2.5, 3, c), 0.0);
  EXPECT_DOUBLE_EQ(normalize_score(3, 3, c), 0.5);
  c.max_score = 1;  // inverted range: same guard, no negative scale
  EXPECT_DOUBLE_EQ(normalize_score(3.5, 3, c), 1.0);
}

// ---------------------------------------------------------------------------------------------
// calibrate_from_normal: threshold = max(mean + 3 sd, max + sd)

TEST(CalibrateFromNormal, HandComputed) {
  // {1, 2, 3}: mean 2, sd 1 -> max(2 + 3, 3 + 1) = 5. min 1, max_score 2 * 5 - 1 = 9.
  // Pixels {1, 3}: mean 2, sd sqrt(2) -> max(2 + 3 sqrt 2, 3 + sqrt 2) = 2 + 3 sqrt 2.
  const Calibration c = calibrate_from_normal({1, 2, 3}, {1, 3});
  EXPECT_DOUBLE_EQ(c.image_threshold, 5.0);
  EXPECT_DOUBLE_EQ(c.pixel_threshold, 2 + 3 * std::sqrt(2.0));
  EXPECT_DOUBLE_EQ(c.min_score, 1.0);
  EXPECT_DOUBLE_EQ(c.max_score, 9.0);
  EXPECT_EQ(c.source, "holdout");
  // The lowest normal image maps to 0, the threshold to 0.5, 9 to 1.
  EXPECT_DOUBLE_EQ(normalize_score(1, c.image_threshold, c), 0.0);
  EXPECT_DOUBLE_EQ(normalize_score(3, c.image_threshold, c), 0.25);
  EXPECT_DOUBLE_EQ(normalize_score(5, c.image_threshold, c), 0.5);
  EXPECT_DOUBLE_EQ(normalize_score(9, c.image_threshold, c), 1.0);
}

TEST(CalibrateFromNormal, LongTailUsesMaxPlusSpread) {
  // Nine 0s and one 10: mean 1, sd sqrt((9 * 1 + 81) / 9) = sqrt(10).
  // mean + 3 sd = 10.49 < max + sd = 13.16.
  std::vector<float> s(9, 0.0f);
  s.push_back(10);
  const Calibration c = calibrate_from_normal(s, {});
  EXPECT_DOUBLE_EQ(c.image_threshold, 10 + std::sqrt(10.0));
  EXPECT_DOUBLE_EQ(c.pixel_threshold, c.image_threshold);  // no pixels: the image threshold
}

TEST(CalibrateFromNormal, NoSpreadFallsBackToTenPercent) {
  // One score 2: sd taken as 0.2 -> max(2.6, 2.2) = 2.6; max_score 2 * 2.6 - 2 = 3.2.
  const Calibration c = calibrate_from_normal({2}, {});
  EXPECT_DOUBLE_EQ(c.image_threshold, 2.6);
  EXPECT_DOUBLE_EQ(c.min_score, 2.0);
  EXPECT_DOUBLE_EQ(c.max_score, 3.2);
  // All equal: the same rule.
  EXPECT_DOUBLE_EQ(calibrate_from_normal({2, 2, 2}, {}).image_threshold, 2.6);
  // All zero: the threshold is just above 0, and 0 stays normal.
  const Calibration z = calibrate_from_normal({0, 0}, {0, 0, 0});
  EXPECT_GT(z.image_threshold, 0.0);
  EXPECT_GT(z.pixel_threshold, 0.0);
  EXPECT_LT(normalize_score(0, z.image_threshold, z), 0.5);
  EXPECT_DOUBLE_EQ(normalize_score(1, z.image_threshold, z), 1.0);
}

TEST(CalibrateFromNormal, EveryHeldOutScoreStaysBelow) {
  std::mt19937 rng(5);
  std::lognormal_distribution<float> d(0, 0.5);
  for (int n : {1, 2, 5, 30, 100}) {
    std::vector<float> s(n), px(n * 50);
    for (auto& v : s) v = d(rng);
    for (auto& v : px) v = d(rng);
    const Calibration c = calibrate_from_normal(s, px);
    const double top = *std::max_element(s.begin(), s.end());
    EXPECT_GT(c.image_threshold, top) << n;
    EXPECT_GT(c.pixel_threshold, *std::max_element(px.begin(), px.end())) << n;
    for (float v : s) {
      const double ns = normalize_score(v, c.image_threshold, c);
      EXPECT_GE(ns, 0.0);
      EXPECT_LT(ns, 0.5);
    }
  }
}

TEST(CalibrateFromNormal, BadInput) {
  EXPECT_EQ(kind_of([] { calibrate_from_normal({}, {1}); }), ErrorKind::usage);
  EXPECT_EQ(kind_of([] { calibrate_from_normal({1, NAN}, {}); }), ErrorKind::usage);
  EXPECT_EQ(kind_of([] { calibrate_from_normal({1}, {INFINITY}); }), ErrorKind::usage);
}

// ---------------------------------------------------------------------------------------------
// calibrate_from_labels

// F1 by threshold (3 anomalous): 0.6 -> 0, 0.5 -> 0.4, 0.4 -> 2/3, 0.3 -> 4/7, 0.2 -> 0.75,
// 0.1 -> 2/3: the image threshold is 0.2.
const std::vector<float> kScores{0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
const std::vector<uint8_t> kLabels{0, 1, 0, 1, 1, 0};

TEST(CalibrateFromLabels, F1ThresholdsAndRange) {
  // Pixels (2 anomalous): 0.9 -> tp 1 fp 0, F1 2/3; 0.7 -> 1 1, 1/2; 0.35 -> 2 1, 4/5 (best);
  // 0.05 -> 2 2, 2/3.
  const Calibration c =
      calibrate_from_labels(kScores, kLabels, {0.05f, 0.35f, 0.7f, 0.9f}, {0, 1, 0, 1});
  EXPECT_EQ(c.image_threshold, static_cast<double>(0.2f));
  EXPECT_EQ(c.pixel_threshold, static_cast<double>(0.35f));
  EXPECT_EQ(c.min_score, static_cast<double>(0.1f));
  EXPECT_EQ(c.max_score, static_cast<double>(0.6f));
  EXPECT_EQ(c.source, "f1");
}

TEST(CalibrateFromLabels, PixelFallbackIsTheImageThreshold) {
  const auto image_t = static_cast<double>(0.2f);
  EXPECT_EQ(calibrate_from_labels(kScores, kLabels, {}, {}).pixel_threshold, image_t);
  EXPECT_EQ(calibrate_from_labels(kScores, kLabels, {0.5f, 0.7f}, {}).pixel_threshold, image_t);
  EXPECT_EQ(calibrate_from_labels(kScores, kLabels, {0.5f, 0.7f}, {0, 0}).pixel_threshold, image_t);
  EXPECT_EQ(calibrate_from_labels(kScores, kLabels, {0.5f, 0.7f}, {1, 1}).pixel_threshold, image_t);
}

TEST(CalibrateFromLabels, OnlyNormalImagesUseTheHoldoutRule) {
  const Calibration c = calibrate_from_labels({1, 2, 3}, {0, 0, 0}, {1, 3}, {0, 0});
  const Calibration h = calibrate_from_normal({1, 2, 3}, {1, 3});
  EXPECT_DOUBLE_EQ(c.image_threshold, h.image_threshold);
  EXPECT_DOUBLE_EQ(c.pixel_threshold, h.pixel_threshold);
  EXPECT_DOUBLE_EQ(c.min_score, h.min_score);
  EXPECT_DOUBLE_EQ(c.max_score, h.max_score);
  EXPECT_EQ(c.source, "holdout");
}

TEST(CalibrateFromLabels, BadInput) {
  EXPECT_EQ(kind_of([] { calibrate_from_labels({}, {}, {}, {}); }), ErrorKind::usage);
  EXPECT_EQ(kind_of([] { calibrate_from_labels({1, 2}, {0}, {}, {}); }), ErrorKind::usage);
  EXPECT_EQ(kind_of([] { calibrate_from_labels({1, 2}, {0, 1}, {1}, {0, 1}); }), ErrorKind::usage);
  EXPECT_EQ(kind_of([] { calibrate_from_labels({1, NAN}, {0, 1}, {}, {}); }), ErrorKind::usage);
}

}  // namespace
}  // namespace patchcore
