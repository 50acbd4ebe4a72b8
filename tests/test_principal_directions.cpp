#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "principal_directions.h"

namespace patchcore {
namespace {

// Rows spread along known axes with known, distinct variances, plus an offset.
std::vector<float> anisotropic(int64_t n, int64_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> rows(static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j)
      rows[i * d + j] = 5.0f + g(rng) * (j < 3 ? 10.0f - 3.0f * j : 0.1f);
  return rows;
}

TEST(PrincipalDirections, OrthonormalAndAlongTheLargestVariance) {
  const int64_t n = 5000, d = 40;
  const std::vector<float> rows = anisotropic(n, d, 1);
  const PrincipalDirections pd = principal_directions(rows.data(), n, d, 3, 2);
  ASSERT_EQ(pd.p, 3);
  for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(pd.mean[j], 5.0, 0.5);
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) {
      double dot = 0.0;
      for (int64_t j = 0; j < d; ++j) dot += pd.basis[j * 3 + a] * pd.basis[j * 3 + b];
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-12);
    }
  // Spreads 10, 7 and 4 along axes 0, 1, 2: column c is axis c, largest variance first.
  for (int c = 0; c < 3; ++c) EXPECT_GT(std::fabs(pd.basis[c * 3 + c]), 0.99) << "column " << c;
}

TEST(PrincipalDirections, ProjectionMatchesAPlainProduct) {
  const int64_t n = 300, d = 20;
  const std::vector<float> rows = anisotropic(n, d, 2);
  const PrincipalDirections pd = principal_directions(rows.data(), n, d, 4, 1);
  ASSERT_EQ(pd.p, 4);
  std::vector<double> out(static_cast<size_t>(n * 4)), sq(static_cast<size_t>(n));
  project_centred(pd, rows.data(), n, d, out.data(), sq.data());
  for (int64_t i = 0; i < n; i += 37) {
    double norm = 0.0;
    for (int64_t j = 0; j < d; ++j)
      norm += (rows[i * d + j] - pd.mean[j]) * (rows[i * d + j] - pd.mean[j]);
    EXPECT_NEAR(sq[i], norm, 1e-9 * norm);
    double in_subspace = 0.0;
    for (int c = 0; c < 4; ++c) {
      double v = 0.0;
      for (int64_t j = 0; j < d; ++j) v += (rows[i * d + j] - pd.mean[j]) * pd.basis[j * 4 + c];
      EXPECT_NEAR(out[i * 4 + c], v, 1e-9 * (1 + std::fabs(v)));
      in_subspace += v * v;
    }
    EXPECT_LE(in_subspace, norm * (1 + 1e-12));  // what the bounds rely on
  }
}

TEST(PrincipalDirections, NoneForImpossibleRequests) {
  const std::vector<float> rows = anisotropic(10, 4, 3);
  EXPECT_EQ(principal_directions(rows.data(), 10, 4, 0).p, 0);
  EXPECT_EQ(principal_directions(rows.data(), 10, 4, 5).p, 0);
  EXPECT_EQ(principal_directions(rows.data(), 0, 4, 2).p, 0);
  // Constant rows: no variance, yet the directions are still orthonormal and usable.
  const std::vector<float> flat(40, 1.0f);
  const PrincipalDirections pd = principal_directions(flat.data(), 10, 4, 2);
  ASSERT_EQ(pd.p, 2);
  double dot = 0.0;
  for (int j = 0; j < 4; ++j) dot += pd.basis[j * 2] * pd.basis[j * 2 + 1];
  EXPECT_NEAR(dot, 0.0, 1e-12);
}

}  // namespace
}  // namespace patchcore
