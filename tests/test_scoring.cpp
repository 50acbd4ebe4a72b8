#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "error.h"
#include "scoring.h"

namespace patchcore {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float lo = 0, float hi = 5) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

Tensor matrix(int64_t rows, int64_t cols, std::vector<float> values) {
  Tensor t({rows, cols});
  EXPECT_EQ(t.data.size(), values.size());
  t.data = std::move(values);
  return t;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

TEST(AnomalyMap, MatchesReference) {
  struct Grid {
    int h, w, size;
  };
  // size 13 is narrower than the sigma-4 kernel's radius 16: the border reflects repeatedly.
  for (Grid g : {Grid{7, 5, 40}, Grid{4, 4, 13}, Grid{9, 9, 9}, Grid{6, 3, 4}}) {
    const auto patch = random_values(static_cast<size_t>(g.h) * g.w, 3 + g.size);
    for (Upsample up : {Upsample::bilinear, Upsample::nearest})
      for (bool r101 : {false, true})
        for (double sigma : {0.0, 1.5, 4.0}) {
          SCOPED_TRACE(std::to_string(g.h) + "x" + std::to_string(g.w) + " -> " +
                       std::to_string(g.size) + " nearest " +
                       std::to_string(up == Upsample::nearest) + " r101 " + std::to_string(r101) +
                       " sigma " + std::to_string(sigma));
          MapParams p;
          p.upsample = up;
          p.reflect101 = r101;
          p.sigma = sigma;
          AnomalyMap fast = anomaly_map(patch, g.h, g.w, g.size, p);
          AnomalyMap ref = anomaly_map_reference(patch, g.h, g.w, g.size, p);
          ASSERT_EQ(fast.height, g.size);
          ASSERT_EQ(fast.width, g.size);
          ASSERT_EQ(fast.values.size(), static_cast<size_t>(g.size) * g.size);
          ASSERT_EQ(ref.values.size(), fast.values.size());
          const double tol = 1e-5 * max_abs(ref.values);
          for (size_t i = 0; i < fast.values.size(); ++i)
            ASSERT_NEAR(fast.values[i], ref.values[i], tol) << i;
        }
  }
}

TEST(AnomalyMap, ConstantStaysConstant) {
  const std::vector<float> patch(6 * 4, 2.5f);
  for (Upsample up : {Upsample::bilinear, Upsample::nearest})
    for (bool r101 : {false, true}) {
      MapParams p;
      p.upsample = up;
      p.reflect101 = r101;
      for (const AnomalyMap& m :
           {anomaly_map(patch, 6, 4, 37, p), anomaly_map_reference(patch, 6, 4, 37, p)})
        for (float v : m.values) ASSERT_NEAR(v, 2.5f, 1e-5);
    }
}

// torch bilinear, align_corners = false, 2 -> 4: in0, 3/4 in0 + 1/4 in1, 1/4 in0 + 3/4 in1, in1.
// nearest 2 -> 3: floor(dst * 2 / 3) = 0, 0, 1.
TEST(AnomalyMap, UpsamplingHandComputed) {
  MapParams p;
  p.sigma = 0;
  for (const AnomalyMap& m :
       {anomaly_map({0, 4, 8, 12}, 2, 2, 4, p), anomaly_map_reference({0, 4, 8, 12}, 2, 2, 4, p)}) {
    const float expected[16] = {0, 1, 3, 4, 2, 3, 5, 6, 6, 7, 9, 10, 8, 9, 11, 12};
    for (int i = 0; i < 16; ++i) EXPECT_FLOAT_EQ(m.values[i], expected[i]) << i;
  }
  p.upsample = Upsample::nearest;
  for (const AnomalyMap& m :
       {anomaly_map({1, 2, 3, 4}, 2, 2, 3, p), anomaly_map_reference({1, 2, 3, 4}, 2, 2, 3, p)}) {
    const float expected[9] = {1, 1, 2, 1, 1, 2, 3, 3, 4};
    for (int i = 0; i < 9; ++i) EXPECT_FLOAT_EQ(m.values[i], expected[i]) << i;
  }
}

// An impulse spreads over exactly 2 * round(4 sigma) + 1 = 33 pixels for sigma 4, with the
// normalised Gaussian weights exp(-x^2 / 32) / sum.
TEST(AnomalyMap, KernelHas33TapsForSigma4) {
  const int n = 61, c = 30;
  std::vector<float> patch(n * n, 0.0f);
  patch[c * n + c] = 1.0f;
  MapParams p;
  p.upsample = Upsample::nearest;  // identity at equal size
  AnomalyMap m = anomaly_map(patch, n, n, n, p);
  double norm = 0;
  for (int x = -16; x <= 16; ++x) norm += std::exp(-x * x / 32.0);
  const double g0 = 1 / norm;
  for (int d = 0; d <= 20; ++d) {
    const double g = d <= 16 ? std::exp(-d * d / 32.0) / norm : 0.0;
    EXPECT_NEAR(m.values[c * n + c + d], g0 * g, 1e-8) << d;
    EXPECT_NEAR(m.values[(c - d) * n + c], g0 * g, 1e-8) << d;
  }
}

// BORDER_REFLECT (scipy 'reflect') repeats the edge pixel, REFLECT_101 does not: for a row
// [1 0 0 ...] the blurred first pixel differs.
TEST(AnomalyMap, BorderModesDiffer) {
  const int n = 20;
  std::vector<float> patch(n * n, 0.0f);
  for (int y = 0; y < n; ++y) patch[y * n] = 1.0f;
  MapParams p;
  p.upsample = Upsample::nearest;
  p.sigma = 1.0;
  const float reflect = anomaly_map(patch, n, n, n, p).values[0];
  p.reflect101 = true;
  const float reflect101 = anomaly_map(patch, n, n, n, p).values[0];
  // 9 taps g_k = exp(-k^2 / 2), |k| <= 4, normalised by s: reflect sees 1 at offsets 0 and -1,
  // reflect101 at offset 0 only.
  const double g0 = 1, g1 = std::exp(-0.5);
  double s = 0;
  for (int k = -4; k <= 4; ++k) s += std::exp(-k * k / 2.0);
  EXPECT_NEAR(reflect, (g0 + g1) / s, 1e-6);
  EXPECT_NEAR(reflect101, g0 / s, 1e-6);
}

TEST(AnomalyMap, RejectsBadArguments) {
  MapParams p;
  EXPECT_THROW(anomaly_map({1, 2, 3}, 2, 2, 8, p), Error);
  EXPECT_THROW(anomaly_map({1, 2, 3, 4}, 2, 2, 0, p), Error);
  p.sigma = -1;
  EXPECT_THROW(anomaly_map({1, 2, 3, 4}, 2, 2, 8, p), Error);
}

TEST(ScorePatches, MatchesBruteForce) {
  const int64_t M = 150, D = 12, n = 40;
  Tensor bank = matrix(M, D, random_values(M * D, 11, -1, 1));
  const auto patches = random_values(n * D, 12, -1.2f, 1.2f);
  NearestNeighbors nn(bank, 1);
  for (int k : {1, 4})
    for (bool squared : {false, true}) {
      SCOPED_TRACE("k " + std::to_string(k) + " squared " + std::to_string(squared));
      ScoringParams p;
      p.k = k;
      p.squared_l2 = squared;
      ImageScores s = score_patches(nn, patches.data(), n, p);
      ASSERT_EQ(s.patch.size(), static_cast<size_t>(n));
      double best = -1;
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> d;
        for (int64_t m = 0; m < M; ++m) {
          double sq = 0;
          for (int64_t j = 0; j < D; ++j) {
            const double t = patches[i * D + j] - bank.data[m * D + j];
            sq += t * t;
          }
          d.push_back(squared ? sq : std::sqrt(sq));
        }
        std::sort(d.begin(), d.end());
        double mean = 0;
        for (int j = 0; j < k; ++j) mean += d[j] / k;
        EXPECT_NEAR(s.patch[i], mean, 1e-5 * (1 + mean)) << i;
        best = std::max(best, mean);
      }
      EXPECT_NEAR(s.score, best, 1e-5 * (1 + best));
      EXPECT_DOUBLE_EQ(s.score, *std::max_element(s.patch.begin(), s.patch.end()));
    }
}

// Bank m0 (0,0), m1 (1,0), m2 (0,2), m3 (10,10); worst patch t* = (3,0) with nearest m1 at 2.
// The 3 nearest bank rows of m1 are m1 (0), m0 (1), m2 (sqrt 5); from t* they lie at 2, 3 and
// sqrt 13. Eq. 7: (1 - e^2 / (e^2 + e^3 + e^sqrt13)) * 2.
TEST(ScorePatches, Eq7HandComputed) {
  NearestNeighbors nn(matrix(4, 2, {0, 0, 1, 0, 0, 2, 10, 10}), 1);
  const std::vector<float> patches{0, 0.1f, 3, 0};
  ScoringParams p;
  p.reweight = true;
  p.reweight_b = 3;
  const double w = 1 - std::exp(2.0) / (std::exp(2.0) + std::exp(3.0) + std::exp(std::sqrt(13.0)));
  ImageScores s = score_patches(nn, patches.data(), 2, p);
  EXPECT_NEAR(s.patch[0], 0.1, 1e-6);
  EXPECT_NEAR(s.patch[1], 2.0, 1e-6);
  EXPECT_NEAR(s.score, w * 2.0, 1e-6);
  EXPECT_LT(s.score, 2.0 * 0.9);  // the weight really applies

  // Squared patch scores: the weight still uses plain L2, the score it multiplies is s* = 4.
  p.squared_l2 = true;
  s = score_patches(nn, patches.data(), 2, p);
  EXPECT_NEAR(s.patch[1], 4.0, 1e-6);
  EXPECT_NEAR(s.score, w * 4.0, 1e-6);

  // b larger than the bank: all 4 rows, m3 at sqrt 149.
  p.squared_l2 = false;
  p.reweight_b = 9;
  s = score_patches(nn, patches.data(), 2, p);
  const double w4 = 1 - std::exp(2.0) / (std::exp(2.0) + std::exp(3.0) + std::exp(std::sqrt(13.0)) +
                                         std::exp(std::sqrt(149.0)));
  EXPECT_NEAR(s.score, w4 * 2.0, 1e-6);
}

// Distances in the hundreds overflow exp() unless the largest exponent is subtracted first.
TEST(ScorePatches, Eq7IsStableForLargeDistances) {
  const float f = 300;
  NearestNeighbors nn(matrix(4, 2, {0, 0, 1 * f, 0, 0, 2 * f, 10 * f, 10 * f}), 1);
  const std::vector<float> patches{0, 0.1f * f, 3 * f, 0};
  ScoringParams p;
  p.reweight = true;
  p.reweight_b = 3;
  ImageScores s = score_patches(nn, patches.data(), 2, p);
  // weight = 1 - 1 / (1 + e^(3f - 2f) + e^((sqrt13 - 2) f)) = 1 to double precision.
  ASSERT_TRUE(std::isfinite(s.score));
  EXPECT_NEAR(s.score, 2.0 * f, 1e-3);
}

// A bank full of duplicates of m*: m* must count in N_b even if the search lists other copies.
TEST(ScorePatches, Eq7WithDuplicateRows) {
  NearestNeighbors nn(matrix(5, 1, {1, 1, 1, 1, 1}), 1);
  const std::vector<float> patches{4};
  ScoringParams p;
  p.reweight = true;
  p.reweight_b = 3;
  ImageScores s = score_patches(nn, patches.data(), 1, p);
  EXPECT_NEAR(s.score, (1 - 1.0 / 3) * 3.0, 1e-6);
}

TEST(ScorePatches, RejectsBadArguments) {
  NearestNeighbors nn(matrix(2, 1, {0, 1}), 1);
  const std::vector<float> patches{0.5f};
  ScoringParams p;
  p.k = 3;
  EXPECT_THROW(score_patches(nn, patches.data(), 1, p), Error);
  p.k = 0;
  EXPECT_THROW(score_patches(nn, patches.data(), 1, p), Error);
  p.k = 1;
  EXPECT_THROW(score_patches(nn, patches.data(), 0, p), Error);
  p.reweight = true;
  p.reweight_b = 0;
  EXPECT_THROW(score_patches(nn, patches.data(), 1, p), Error);
}

}  // namespace
}  // namespace patchcore
