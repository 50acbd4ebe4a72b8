#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "coreset.h"
#include "patchcore/patchcore.h"

namespace patchcore {
namespace {

Tensor random_matrix(int64_t rows, int64_t cols, uint32_t seed, float scale = 1.0f) {
  Tensor t({rows, cols});
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (float& v : t.data) v = scale * g(rng);
  return t;
}

// Gaussian blobs of very different spread, many exact duplicate rows and integer coordinates:
// equal distances everywhere, so every tie rule gets exercised.
Tensor clustered(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 5);
  const Tensor centres = random_matrix(6, cols, seed + 1, 20.0f);
  Tensor t({rows, cols});
  for (int64_t i = 0; i < rows; ++i) {
    const int c = pick(rng);
    for (int64_t j = 0; j < cols; ++j)
      t.row(i)[j] = std::round(centres.row(c)[j] + static_cast<float>(c) * 0.5f * g(rng));
    if (i >= 10 && i % 3 == 0) {  // a third of the rows repeat an earlier one
      const int64_t src = std::uniform_int_distribution<int64_t>(0, i - 1)(rng);
      std::copy(t.row(src), t.row(src) + cols, t.row(i));
    }
  }
  return t;
}

CoresetParams params(double ratio, int proj_dim, uint64_t seed, int threads = 2) {
  CoresetParams p;
  p.ratio = ratio;
  p.proj_dim = proj_dim;
  p.seed = seed;
  p.threads = threads;
  return p;
}

void expect_valid_picks(const std::vector<int64_t>& picks, int64_t n, int64_t expected) {
  EXPECT_EQ(static_cast<int64_t>(picks.size()), expected);
  std::set<int64_t> seen;
  for (int64_t i : picks) {
    EXPECT_GE(i, 0);
    EXPECT_LT(i, n);
    seen.insert(i);
  }
  // Distinct while some row is still uncovered (these data sets never get fully covered).
  EXPECT_EQ(seen.size(), picks.size());
}

TEST(Coreset, FastMatchesReferenceOnRandomData) {
  struct Case {
    int64_t n, d;
    double ratio;
    int proj;
  };
  for (const Case& c : {Case{1000, 256, 0.05, 128}, Case{3000, 64, 0.02, 128},
                        Case{5000, 32, 0.1, 128}, Case{777, 200, 0.1, 16}, Case{2000, 17, 0.2, 128},
                        Case{9000, 8, 0.03, 128}, Case{8192, 32, 0.02, 128}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " d=" << c.d << " ratio=" << c.ratio);
    const Tensor x = random_matrix(c.n, c.d, static_cast<uint32_t>(c.n + c.d));
    const auto p = params(c.ratio, c.proj, 42);
    const auto fast = greedy_coreset(x, p);
    EXPECT_EQ(fast, greedy_coreset_reference(x, p));
    expect_valid_picks(fast, c.n, static_cast<int64_t>(std::floor(c.ratio * c.n)));
  }
}

TEST(Coreset, FastMatchesReferenceOnClusteredDataWithDuplicates) {
  for (int64_t d : {3, 40, 300}) {
    SCOPED_TRACE(::testing::Message() << "d=" << d);
    const Tensor x = clustered(2500, d, static_cast<uint32_t>(d));
    for (double ratio : {0.01, 0.1, 0.5}) {  // d = 3, 0.5: past full coverage, distances 0
      const auto p = params(ratio, 128, 7);
      const auto fast = greedy_coreset(x, p);
      EXPECT_EQ(fast, greedy_coreset_reference(x, p)) << "ratio=" << ratio;
      EXPECT_EQ(static_cast<int64_t>(fast.size()), static_cast<int64_t>(std::floor(ratio * 2500)));
    }
  }
}

TEST(Coreset, FastMatchesReferenceAtExtremeScales) {
  // 1e-19: squares underflow into subnormals; 1e12: large but finite sums.
  for (float scale : {1e-19f, 1e-3f, 1e12f}) {
    SCOPED_TRACE(::testing::Message() << "scale=" << scale);
    const Tensor x = random_matrix(3000, 24, 13, scale);
    const auto p = params(0.05, 128, 3);
    EXPECT_EQ(greedy_coreset(x, p), greedy_coreset_reference(x, p));
  }
}

// Image-like rows: `images` grids of side x side patches, each patch a smooth function of its
// position (random low-frequency waves with per-image phases), rows image by image in raster
// order, as the memory bank stores them: consecutive rows are close, so a run's rows are
// covered together and the lazy search leaves whole runs stale. `noise` adds independent jitter
// per value.
Tensor smooth_patches(int images, int side, int64_t d, uint32_t seed, float noise) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<float> phase(0.0f, 6.2831853f);
  constexpr int kWaves = 3;
  std::vector<float> fx(kWaves * d), fy(kWaves * d), amp(kWaves * d), ph(kWaves * d);
  for (int64_t k = 0; k < kWaves * d; ++k) {
    fx[k] = 0.15f * g(rng);
    fy[k] = 0.15f * g(rng);
    amp[k] = g(rng);
  }
  Tensor t({int64_t{images} * side * side, d});
  int64_t r = 0;
  for (int im = 0; im < images; ++im) {
    for (float& v : ph) v = phase(rng);
    for (int y = 0; y < side; ++y)
      for (int x = 0; x < side; ++x, ++r)
        for (int64_t j = 0; j < d; ++j) {
          float v = noise * g(rng);
          for (int k = 0; k < kWaves; ++k) {
            const int64_t w = k * d + j;
            v += amp[w] *
                 std::cos(fx[w] * static_cast<float>(x) + fy[w] * static_cast<float>(y) + ph[w]);
          }
          t.row(r)[j] = std::max(0.0f, v);  // ReLU-like: many exact zeros
        }
  }
  return t;
}

TEST(Coreset, FastMatchesReferenceOnImageLikeRows) {
  struct Case {
    int images, side;
    int64_t d;
    double ratio;
    float noise;
  };
  for (const Case& c :
       {Case{6, 24, 64, 0.05, 0.0f}, Case{6, 24, 64, 0.2, 0.01f}, Case{4, 30, 200, 0.03, 0.1f},
        Case{3, 20, 7, 0.3, 0.0f}, Case{2, 33, 40, 0.5, 0.0f}}) {
    SCOPED_TRACE(::testing::Message() << "images=" << c.images << " d=" << c.d
                                      << " ratio=" << c.ratio << " noise=" << c.noise);
    const Tensor x = smooth_patches(c.images, c.side, c.d, static_cast<uint32_t>(c.d), c.noise);
    const auto p = params(c.ratio, 128, 11, 1);
    const auto fast = greedy_coreset(x, p);
    EXPECT_EQ(fast, greedy_coreset_reference(x, p));
    EXPECT_EQ(fast, greedy_coreset(x, params(c.ratio, 128, 11, 2)));
    EXPECT_EQ(static_cast<int64_t>(fast.size()),
              static_cast<int64_t>(std::floor(c.ratio * static_cast<double>(x.dim(0)))));
  }
}

TEST(Coreset, FastMatchesReferenceWhenRunsAreIdentical) {
  // Runs of equal rows and rows equal across runs: many exactly equal minima, and ties between
  // runs must still go to the lowest index.
  Tensor x({640, 5});
  for (int64_t i = 0; i < 640; ++i)
    for (int64_t j = 0; j < 5; ++j)
      x.row(i)[j] = static_cast<float>(((i / 32) * 7 + j * 3) % 11) + ((i / 96) % 2 ? 0.5f : 0.0f);
  for (double ratio : {0.02, 0.05, 0.5}) {
    const auto p = params(ratio, 128, 4);
    EXPECT_EQ(greedy_coreset(x, p), greedy_coreset_reference(x, p)) << "ratio=" << ratio;
  }
}

TEST(Coreset, HandMadeLineHasAKnownOrder) {
  // Rows at positions 20, 0, 40, 10, 30 on a line. start_points is clamped to N = 5, so every
  // row's start distance is its mean distance to all rows, whatever the seed: 12, 20, 20, 14,
  // 14 (squared 144, 400, 400, 196, 196). Pick 1: row 1 (400, tie with row 2, lower index).
  // Distances to position 0 lower rows 3 (to 100). Pick 2: row 2 (400); row 4 drops to 100.
  // Pick 3: row 0 (144 > 100). Rows 3 and 4 tie at 100: pick 4 is row 3.
  Tensor x({5, 1});
  x.data = {20, 0, 40, 10, 30};
  for (uint64_t seed : {0, 1, 2, 99}) {
    auto p = params(0.99, 128, seed);
    p.start_points = 100;
    EXPECT_EQ(greedy_coreset(x, p), (std::vector<int64_t>{1, 2, 0, 3}));
    EXPECT_EQ(greedy_coreset_reference(x, p), (std::vector<int64_t>{1, 2, 0, 3}));
  }
}

TEST(Coreset, OneStartPointCases) {
  // A = rows 0, 2 at (0, 0); B = rows 1, 3 at (100, 0); M = row 4 at (50, 1). One start row s
  // (not selected). s in A: start distances A 0, B 100, M |M-A|: picks B (row 1), then M
  // (|M-B| = |M-A|), then every distance is 0 and the lowest index, row 0, is picked. s in B:
  // row 0, then M, then row 0 again (re-picks are the algorithm's, once everything is covered).
  // s = M: A and B start at |M-A|; row 0, then row 1 (B is 100 from A, start cap |M-A|), then 0.
  const std::set<std::vector<int64_t>> possible = {{1, 4, 0}, {0, 4, 0}, {0, 1, 0}};
  Tensor x({5, 2});
  x.data = {0, 0, 100, 0, 0, 0, 100, 0, 50, 1};
  std::set<std::vector<int64_t>> seen;
  for (uint64_t seed = 0; seed < 16; ++seed) {
    auto p = params(0.6, 128, seed);  // floor(3.0) = 3 picks
    p.start_points = 1;
    const auto picks = greedy_coreset(x, p);
    EXPECT_EQ(picks, greedy_coreset_reference(x, p));
    EXPECT_TRUE(possible.count(picks)) << "seed " << seed;
    seen.insert(picks);
  }
  EXPECT_GE(seen.size(), 2u) << "the seed never changed the start row";
}

TEST(Coreset, RatioOneKeepsEveryRowInOrder) {
  const Tensor x = random_matrix(50, 300, 1);
  for (double ratio : {1.0, 2.5}) {
    std::vector<int64_t> all(50);
    std::iota(all.begin(), all.end(), int64_t{0});
    EXPECT_EQ(greedy_coreset(x, params(ratio, 128, 0)), all);
    EXPECT_EQ(greedy_coreset_reference(x, params(ratio, 128, 0)), all);
  }
}

TEST(Coreset, MinimumSizeOverridesASmallRatio) {
  const Tensor x = random_matrix(500, 16, 31);
  auto p = params(0.01, 128, 4);  // 5 picks by the ratio alone
  p.min_picks = 40;
  const auto picks = greedy_coreset(x, p);
  expect_valid_picks(picks, 500, 40);
  EXPECT_EQ(picks, greedy_coreset_reference(x, p));
  // The floor only ever adds picks: the ratio's 5 come first, in the same order.
  const auto by_ratio = greedy_coreset(x, params(0.01, 128, 4));
  ASSERT_EQ(by_ratio.size(), 5u);
  EXPECT_TRUE(std::equal(by_ratio.begin(), by_ratio.end(), picks.begin()));
  p.ratio = 0.2;  // 100 > 40: the ratio wins
  EXPECT_EQ(greedy_coreset(x, p).size(), 100u);
  p.min_picks = 500;  // as many as there are rows: everything, in order, no selection
  std::vector<int64_t> all(500);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(greedy_coreset(x, p), all);
  EXPECT_EQ(greedy_coreset_reference(x, p), all);
}

TEST(Coreset, TinyInputs) {
  Tensor one({1, 4});
  one.data = {1, 2, 3, 4};
  EXPECT_EQ(greedy_coreset(one, params(0.01, 128, 0)), (std::vector<int64_t>{0}));
  const Tensor three = random_matrix(3, 2, 5);
  for (double ratio : {0.01, 0.5, 0.7}) {
    const auto p = params(ratio, 128, 0);
    const auto fast = greedy_coreset(three, p);
    EXPECT_EQ(fast.size(), ratio < 0.6 ? 1u : 2u);
    EXPECT_EQ(fast, greedy_coreset_reference(three, p));
  }
  EXPECT_TRUE(greedy_coreset(Tensor({0, 8}), params(0.1, 128, 0)).empty());
}

TEST(Coreset, DeterministicAcrossRunsAndThreadCounts) {
  // 16384 x 128 projected floats: large enough for the multi-threaded set-up (projection,
  // start distances) and for the threads to share the updates.
  const Tensor x = clustered(16384, 160, 21);
  const auto a = greedy_coreset(x, params(0.01, 128, 5, 1));
  EXPECT_EQ(a, greedy_coreset(x, params(0.01, 128, 5, 1)));
  EXPECT_EQ(a, greedy_coreset(x, params(0.01, 128, 5, 2)));
  EXPECT_EQ(a, greedy_coreset(x, params(0.01, 128, 5, 3)));
  EXPECT_EQ(a, greedy_coreset_reference(x, params(0.01, 128, 5, 2)));
}

TEST(Coreset, SeedChangesThePicks) {
  const Tensor x = random_matrix(2000, 200, 22);
  const auto a = greedy_coreset(x, params(0.02, 128, 0));
  const auto b = greedy_coreset(x, params(0.02, 128, 1));
  EXPECT_EQ(a.size(), b.size());
  EXPECT_NE(a, b);
}

TEST(Coreset, ProgressCountsUpToTotal) {
  const Tensor x = random_matrix(3000, 20, 23);
  std::vector<int64_t> done;
  int64_t total_seen = -1;
  const auto picks = greedy_coreset(x, params(0.1, 128, 0), [&](int64_t d, int64_t total) {
    done.push_back(d);
    total_seen = total;
  });
  ASSERT_FALSE(done.empty());
  EXPECT_EQ(total_seen, 300);
  EXPECT_EQ(done.back(), 300);
  EXPECT_TRUE(std::is_sorted(done.begin(), done.end()));
  EXPECT_EQ(std::adjacent_find(done.begin(), done.end()), done.end());
  EXPECT_EQ(picks.size(), 300u);
}

TEST(Coreset, ProgressIsCalledOnTheCallingThread) {
  // With several threads sharing the updates, the callback still runs on the calling thread.
  const Tensor x = random_matrix(6000, 40, 25);
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << "threads=" << threads);
    const auto caller = std::this_thread::get_id();
    std::vector<int64_t> done;
    bool elsewhere = false;
    greedy_coreset(x, params(0.05, 128, 0, threads), [&](int64_t d, int64_t) {
      done.push_back(d);
      elsewhere = elsewhere || std::this_thread::get_id() != caller;
    });
    EXPECT_FALSE(elsewhere);
    ASSERT_FALSE(done.empty());
    EXPECT_EQ(done.back(), 300);
    EXPECT_TRUE(std::is_sorted(done.begin(), done.end()));
    EXPECT_EQ(std::adjacent_find(done.begin(), done.end()), done.end());
  }
}

TEST(Coreset, AnExceptionFromProgressStopsTheSearch) {
  // A callback may throw to cancel (a user closing the window): it must reach the caller, not
  // terminate the process from inside the threads.
  const Tensor x = random_matrix(6000, 40, 26);
  for (int threads : {1, 2}) {
    int64_t last = 0;
    EXPECT_THROW(greedy_coreset(x, params(0.05, 128, 0, threads),
                                [&](int64_t d, int64_t) {
                                  last = d;
                                  if (d >= 30) throw std::runtime_error("cancelled");
                                }),
                 std::runtime_error);
    EXPECT_GE(last, 30);
    EXPECT_LT(last, 300);
  }
}

TEST(Coreset, RejectsBadParameters) {
  const Tensor x = random_matrix(10, 4, 24);
  auto expect_usage = [&](const CoresetParams& p) {
    try {
      greedy_coreset(x, p);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::usage);
    }
  };
  expect_usage(params(0.0, 128, 0));
  expect_usage(params(-1.0, 128, 0));
  expect_usage(params(std::nan(""), 128, 0));
  expect_usage(params(0.5, 0, 0));
  auto p = params(0.5, 128, 0);
  p.start_points = 0;
  expect_usage(p);
  p = params(0.5, 128, 0);
  p.min_picks = -1;
  expect_usage(p);
  Tensor bad = x;
  bad.data[7] = std::nanf("");
  EXPECT_THROW(greedy_coreset(bad, params(0.5, 128, 0)), Error);
  EXPECT_THROW(greedy_coreset(Tensor({10}), params(0.5, 128, 0)), Error);
}

TEST(CoresetProjection, GaussianWithTheRightScaleAndSeeded) {
  const auto m = coreset_projection_matrix(512, 128, 9);
  ASSERT_EQ(m.size(), 512u * 128u);
  double sum = 0, sq = 0;
  for (float v : m) {
    sum += v;
    sq += double(v) * v;
  }
  const double mean = sum / m.size();
  const double var = sq / m.size() - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.01 / std::sqrt(128.0));
  EXPECT_NEAR(var * 128.0, 1.0, 0.03);
  EXPECT_EQ(m, coreset_projection_matrix(512, 128, 9));
  EXPECT_NE(m, coreset_projection_matrix(512, 128, 10));
  // Odd sizes use half a Box-Muller pair at the end.
  EXPECT_EQ(coreset_projection_matrix(3, 5, 1).size(), 15u);
}

TEST(CoresetProjection, MatchesADoubleProductAndIgnoresThreads) {
  const Tensor x = random_matrix(103, 300, 30);  // row and column counts off the 4 x 16 blocks
  for (int pd : {128, 37}) {
    const auto m = coreset_projection_matrix(300, pd, 4);
    const Tensor z1 = coreset_project(x, m, pd, 1);
    const Tensor z2 = coreset_project(x, m, pd, 2);
    ASSERT_EQ(z1.shape, (std::vector<int64_t>{103, pd}));
    EXPECT_EQ(z1.data, z2.data);
    for (int64_t i = 0; i < 103; ++i)
      for (int j = 0; j < pd; ++j) {
        double ref = 0, mag = 0;
        for (int k = 0; k < 300; ++k) {
          ref += double(x.row(i)[k]) * m[k * pd + j];
          mag += std::fabs(double(x.row(i)[k]) * m[k * pd + j]);
        }
        ASSERT_NEAR(z1.row(i)[j], ref, 1e-5 * mag);
      }
  }
}

TEST(CoresetDistance, WithinItsErrorBound) {
  std::mt19937 rng(31);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t d : {1, 15, 16, 17, 128, 1000}) {
    std::vector<float> a(d), b(d);
    for (int rep = 0; rep < 20; ++rep) {
      for (auto& v : a) v = g(rng);
      for (auto& v : b) v = 100.0f + g(rng);
      double exact = 0;
      for (int64_t j = 0; j < d; ++j) exact += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
      const double bound = 2.0 * ((d + 15) / 16 + 6) * std::ldexp(1.0, -24);
      EXPECT_LE(std::fabs(coreset_sq_distance(a.data(), b.data(), d) - exact), bound * exact);
    }
    EXPECT_EQ(coreset_sq_distance(a.data(), a.data(), d), 0.0f);
  }
  const float u[3] = {1, 2, 3}, v[3] = {4, 6, 3};
  EXPECT_EQ(coreset_sq_distance(u, v, 3), 25.0f);
}

TEST(CoresetFilter, BothKernelsKeepExactlyThePicksTheDoubleBoundKeeps) {
  // Each kernel against the bound in double: a pick well below the threshold must be kept, one
  // well above dropped; only picks within 1e-5 of it may go either way. Entries past `count`
  // would all pass, so reading them would show.
  constexpr int q = kCoresetSubspaceDim, tile = kCoresetFilterTile;
  std::mt19937 rng(31);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<bool> kernels = {false};
  if (coreset_fma_available()) kernels.push_back(true);
  int kept_total = 0, dropped_total = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int count = trial % 5 == 0 ? 1 + trial % tile : tile;
    const float scale = std::pow(10.0f, static_cast<float>(trial % 7) - 3.0f);
    std::vector<float> row(q), coords(q * tile), slack(tile);
    for (float& v : row) v = scale * g(rng);
    for (float& v : coords) v = scale * g(rng);
    for (float& v : slack) v = 0.01f * scale * scale * u(rng);
    std::vector<int64_t> kept(tile);
    for (int m = 0; m < tile; ++m) kept[m] = 1000 + 3 * m;
    std::vector<double> bound(tile);
    for (int m = 0; m < tile; ++m) {
      double sum = 0;
      for (int l = 0; l < q; ++l) {
        const double t = double(row[l]) - double(coords[l * tile + m]);
        sum += t * t;
      }
      bound[m] = sum - slack[m];
    }
    for (int m = count; m < tile; ++m) slack[m] = 1e30f;  // would pass, if read
    std::vector<double> sorted(bound.begin(), bound.begin() + count);
    std::sort(sorted.begin(), sorted.end());
    const float threshold = static_cast<float>(sorted[sorted.size() / 2]) * 1.001f + 1e-30f;
    for (bool fused : kernels) {
      SCOPED_TRACE(::testing::Message() << "trial " << trial << " fused " << fused);
      std::vector<int64_t> out(tile, -1);
      const int n = coreset_subspace_filter(row.data(), coords.data(), slack.data(), kept.data(),
                                            count, threshold, out.data(), fused);
      ASSERT_GE(n, 0);
      ASSERT_LE(n, count);
      EXPECT_TRUE(std::is_sorted(out.begin(), out.begin() + n));
      std::set<int64_t> got(out.begin(), out.begin() + n);
      EXPECT_EQ(got.size(), static_cast<size_t>(n));
      for (int m = 0; m < count; ++m) {
        const double margin = 1e-5 * (std::fabs(threshold) + bound[m] + slack[m]);
        if (bound[m] < threshold - margin) {
          EXPECT_TRUE(got.count(kept[m])) << "m=" << m;
          ++kept_total;
        } else if (bound[m] > threshold + margin) {
          EXPECT_FALSE(got.count(kept[m])) << "m=" << m;
          ++dropped_total;
        }
      }
      for (int m = count; m < tile; ++m) EXPECT_FALSE(got.count(kept[m])) << "past count, m=" << m;
    }
  }
  EXPECT_GT(kept_total, 5000);  // both outcomes were exercised many times
  EXPECT_GT(dropped_total, 5000);
}

// Not run by default (--gtest_also_run_disabled_tests): the numbers in the report.
TEST(Coreset, SearchOnProjectedRowsPicksWhatTheFeatureSearchPicks) {
  for (int64_t d : {200, 40}) {  // projected, and kept as they are (d <= proj_dim)
    SCOPED_TRACE(::testing::Message() << "d=" << d);
    const Tensor x = random_matrix(3000, d, 7);
    const auto p = params(0.05, 64, 3);
    const MatrixView view{x.ptr(), x.dim(0), x.dim(1)};
    const Tensor projected = coreset_search_rows(view, p.proj_dim, p.seed);
    ASSERT_EQ(projected.dim(1), std::min<int64_t>(d, 64));
    CoresetStats a, b;
    const auto picks = greedy_coreset(view, p, {}, &a);
    EXPECT_EQ(greedy_coreset_projected({projected.ptr(), 3000, projected.dim(1)}, p, {}, &b),
              picks);
    EXPECT_EQ(a.radius, b.radius);
    // The radius is the last pick's distance from the picks before it, and no row lies farther
    // from the picks.
    const int64_t k = projected.dim(1);
    float last = std::numeric_limits<float>::max();
    for (size_t j = 0; j + 1 < picks.size(); ++j)
      last = std::min(last,
                      coreset_sq_distance(projected.row(picks.back()), projected.row(picks[j]), k));
    EXPECT_FLOAT_EQ(a.radius, std::sqrt(last));
    for (int64_t i = 0; i < 3000; ++i) {
      float nearest = std::numeric_limits<float>::max();
      for (int64_t pick : picks)
        nearest = std::min(nearest, coreset_sq_distance(projected.row(i), projected.row(pick), k));
      ASSERT_LE(std::sqrt(nearest), a.radius) << "row " << i;
    }
  }
}

TEST(CoresetProjection, ChunksProjectedApartEqualTheWhole) {
  const Tensor x = random_matrix(2500, 300, 11);
  const auto m = coreset_projection_matrix(300, 32, 5);
  const Tensor whole = coreset_project(x, m, 32, 2);
  for (int64_t r0 : {0, 1024, 2048}) {
    const int64_t rows = std::min<int64_t>(1024, 2500 - r0);
    const Tensor part = coreset_project(MatrixView{x.row(r0), rows, 300}, m, 32, 1);
    EXPECT_TRUE(std::equal(part.data.begin(), part.data.end(), whole.row(r0))) << r0;
  }
}

// The plain continuation: one full pass per pick.
std::vector<int64_t> extend_reference(const Tensor& rows, std::vector<float> sq, float radius,
                                      int64_t max_picks) {
  std::vector<int64_t> picks;
  while (max_picks < 0 || std::ssize(picks) < max_picks) {
    const auto best = std::max_element(sq.begin(), sq.end()) - sq.begin();
    if (!(sq[best] > radius * radius)) break;
    picks.push_back(best);
    for (int64_t i = 0; i < rows.dim(0); ++i)
      sq[i] = std::min(sq[i], coreset_sq_distance(rows.row(i), rows.row(best), rows.dim(1)));
  }
  return picks;
}

TEST(Coreset, ExtendPicksFarthestFirstUntilTheRadius) {
  const Tensor bank = random_matrix(400, 16, 1);
  Tensor rows = random_matrix(5000, 16, 2, 1.5f);
  for (int64_t i = 0; i < 100; ++i)  // some new rows repeat bank rows: distance 0
    std::copy_n(bank.row(i), 16, rows.row(i));
  std::vector<float> sq(5000);
  for (int64_t i = 0; i < 5000; ++i) {
    sq[i] = std::numeric_limits<float>::max();
    for (int64_t j = 0; j < 400; ++j)
      sq[i] = std::min(sq[i], coreset_sq_distance(rows.row(i), bank.row(j), 16));
  }
  const MatrixView view{rows.ptr(), 5000, 16};
  for (float radius : {2.0f, 3.5f, 100.0f}) {
    SCOPED_TRACE(radius);
    std::vector<float> d = sq;
    const auto picks = coreset_extend(view, d, radius, -1, 2);
    EXPECT_EQ(picks, extend_reference(rows, sq, radius, -1));
    for (int64_t pick : picks) EXPECT_GE(pick, 100);
    for (float v : d) EXPECT_LE(v, radius * radius);
    if (radius == 100.0f) {
      EXPECT_TRUE(picks.empty());
    }
  }
  std::vector<float> d = sq;
  const auto capped = coreset_extend(view, d, 0.0f, 25, 2);
  EXPECT_EQ(capped.size(), 25u);
  EXPECT_EQ(capped, extend_reference(rows, sq, 0.0f, 25));
}

TEST(Coreset, DISABLED_Benchmark) {
  for (int64_t n : {int64_t{200000}}) {  // synthetic clusters, 1 % picks
    const Tensor x = clustered(n, 128, 77);
    for (int threads : {1, 2}) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto picks = greedy_coreset(x, params(0.01, 128, 0, threads));
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("clustered n=%lld picks=%zu threads=%d: %.2f s\n", static_cast<long long>(n),
                  picks.size(), threads, s);
    }
  }
  {  // image-like rows: 100 images of 35 x 35 patches, 1 % picks
    const Tensor x = smooth_patches(100, 35, 128, 77, 0.1f);
    const int64_t n = x.dim(0);
    for (int threads : {1, 2}) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto picks = greedy_coreset(x, params(0.01, 128, 0, threads));
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("image-like n=%lld picks=%zu threads=%d: %.2f s\n", static_cast<long long>(n),
                  picks.size(), threads, s);
    }
  }
}

}  // namespace
}  // namespace patchcore
