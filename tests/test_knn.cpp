#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "bf16_screen.h"
#include "knn.h"
#include "patchcore/patchcore.h"

namespace patchcore {
namespace {

Tensor random_matrix(int64_t rows, int64_t cols, uint32_t seed) {
  Tensor t({rows, cols});
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (float& v : t.data) v = g(rng);
  return t;
}

double exact_sq(const float* a, const float* b, int64_t d) {
  double s = 0;
  for (int64_t j = 0; j < d; ++j) s += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
  return s;
}

struct Result {
  std::vector<float> dist;
  std::vector<int64_t> idx;
};

Result run(const NearestNeighbors& nn, const Tensor& q, int k) {
  Result r{std::vector<float>(q.dim(0) * k), std::vector<int64_t>(q.dim(0) * k)};
  nn.search(q.ptr(), q.dim(0), k, r.dist.data(), r.idx.data());
  return r;
}

Result run_reference(const Tensor& bank, const Tensor& q, int k) {
  Result r{std::vector<float>(q.dim(0) * k), std::vector<int64_t>(q.dim(0) * k)};
  knn_reference(bank, q.ptr(), q.dim(0), k, r.dist.data(), r.idx.data());
  return r;
}

// FAISS may swap neighbours whose distances differ by less than its rounding; everything else
// must match the brute force exactly, and every returned distance must be that index's true one.
void expect_matches_reference(const Tensor& bank, const Tensor& q, int k, const Result& got) {
  const Result ref = run_reference(bank, q, k);
  const int64_t d = bank.dim(1);
  int swapped = 0;
  for (int64_t i = 0; i < q.dim(0); ++i)
    for (int j = 0; j < k; ++j) {
      const int64_t at = i * k + j;
      ASSERT_GE(got.idx[at], 0);
      ASSERT_LT(got.idx[at], bank.dim(0));
      EXPECT_EQ(got.dist[at], static_cast<float>(exact_sq(q.row(i), bank.row(got.idx[at]), d)));
      if (j > 0) {
        EXPECT_LE(got.dist[at - 1], got.dist[at]);
      }
      if (got.idx[at] != ref.idx[at]) {
        ++swapped;
        EXPECT_NEAR(got.dist[at], ref.dist[at], 1e-5 * (1.0 + ref.dist[at]));
      } else {
        EXPECT_EQ(got.dist[at], ref.dist[at]);
      }
    }
  EXPECT_LE(swapped, q.dim(0) * k / 100) << "too many neighbours differ from the brute force";
}

TEST(Knn, MatchesBruteForceOnRandomData) {
  struct Case {
    int64_t m, n, d;
    int k;
  };
  // n < 20 takes FAISS's direct path, n >= 20 the BLAS one.
  for (const Case& c : {Case{1, 3, 1, 1}, Case{50, 7, 3, 5}, Case{300, 19, 64, 1},
                        Case{300, 20, 64, 3}, Case{1500, 257, 130, 9}, Case{2000, 64, 1024, 1}}) {
    SCOPED_TRACE(::testing::Message()
                 << "m=" << c.m << " n=" << c.n << " d=" << c.d << " k=" << c.k);
    const Tensor bank = random_matrix(c.m, c.d, 1);
    const Tensor q = random_matrix(c.n, c.d, 2);
    NearestNeighbors nn(bank, 2);
    EXPECT_EQ(nn.size(), c.m);
    EXPECT_EQ(nn.dim(), c.d);
    expect_matches_reference(bank, q, c.k, run(nn, q, c.k));
  }
}

TEST(Knn, QueryEqualToBankRowHasDistanceZero) {
  // Large norms make the ||q||^2 - 2 q.b + ||b||^2 expansion lose the small distances.
  Tensor bank = random_matrix(500, 256, 3);
  for (float& v : bank.data) v = 10.0f + 3.0f * v;
  Tensor q({40, 256});
  for (int64_t i = 0; i < 40; ++i) std::copy(bank.row(i * 7), bank.row(i * 7) + 256, q.row(i));
  NearestNeighbors nn(bank, 2);
  const Result r = run(nn, q, 2);
  for (int64_t i = 0; i < 40; ++i) {
    EXPECT_EQ(r.dist[i * 2], 0.0f);
    EXPECT_EQ(r.idx[i * 2], i * 7);
    EXPECT_GT(r.dist[i * 2 + 1], 0.0f);
  }
  expect_matches_reference(bank, q, 2, r);
}

TEST(Knn, DuplicateBankRowsComeInIndexOrder) {
  Tensor bank = random_matrix(100, 16, 4);
  for (int64_t dup : {10, 55, 99}) std::copy(bank.row(3), bank.row(3) + 16, bank.row(dup));
  for (int64_t n : {1, 30}) {  // both FAISS paths
    Tensor q({n, 16});
    for (int64_t i = 0; i < n; ++i) std::copy(bank.row(3), bank.row(3) + 16, q.row(i));
    NearestNeighbors nn(bank, 1);
    const Result r = run(nn, q, 5);
    for (int64_t i = 0; i < n; ++i) {
      const std::vector<int64_t> first4(r.idx.begin() + i * 5, r.idx.begin() + i * 5 + 4);
      EXPECT_EQ(first4, (std::vector<int64_t>{3, 10, 55, 99}));
      for (int j = 0; j < 4; ++j) EXPECT_EQ(r.dist[i * 5 + j], 0.0f);
      EXPECT_GT(r.dist[i * 5 + 4], 0.0f);
    }
    expect_matches_reference(bank, q, 5, r);
  }
}

TEST(Knn, ThreadCountDoesNotChangeTheAnswer) {
  const Tensor bank = random_matrix(3000, 96, 5);
  const Tensor q = random_matrix(500, 96, 6);
  const Result one = run(NearestNeighbors(bank, 1), q, 4);
  const Result two = run(NearestNeighbors(bank, 2), q, 4);
  EXPECT_EQ(one.idx, two.idx);
  EXPECT_EQ(one.dist, two.dist);
}

TEST(Knn, HandComputedNeighbours) {
  Tensor bank({4, 2});
  bank.data = {0, 0, 3, 4, 1, 1, -2, 0};
  const std::vector<float> q = {0, 0, 3, 3};
  NearestNeighbors nn(bank, 1);
  std::vector<float> dist(6);
  std::vector<int64_t> idx(6);
  nn.search(q.data(), 2, 3, dist.data(), idx.data());
  EXPECT_EQ(idx, (std::vector<int64_t>{0, 2, 3, 1, 2, 0}));
  EXPECT_EQ(dist, (std::vector<float>{0, 2, 4, 1, 8, 18}));
}

TEST(Knn, RejectsBadArguments) {
  NearestNeighbors nn(random_matrix(5, 3, 7), 1);
  const Tensor q = random_matrix(2, 3, 8);
  std::vector<float> dist(12);
  std::vector<int64_t> idx(12);
  for (int k : {0, 6}) {
    try {
      nn.search(q.ptr(), 2, k, dist.data(), idx.data());
      ADD_FAILURE() << "k = " << k << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::usage);
    }
  }
  EXPECT_THROW(knn_reference(nn.bank(), q.ptr(), 2, 6, dist.data(), idx.data()), Error);
  EXPECT_THROW(NearestNeighbors(Tensor({5}), 1), Error);
  nn.search(q.ptr(), 0, 5, dist.data(), idx.data());  // no queries: nothing to do
}

TEST(Knn, MoveKeepsTheBank) {
  NearestNeighbors a(random_matrix(20, 4, 9), 1);
  NearestNeighbors b(std::move(a));
  EXPECT_EQ(b.size(), 20);
  NearestNeighbors c(random_matrix(3, 4, 10), 1);
  c = std::move(b);
  EXPECT_EQ(c.size(), 20);
  const Tensor q = random_matrix(3, 4, 11);
  expect_matches_reference(c.bank(), q, 2, run(c, q, 2));
}

// Rows like CNN patch features: a few strong directions with decaying spread, a weaker
// isotropic rest, an offset from the origin.
Tensor feature_like(int64_t rows, int64_t d, uint32_t seed, float offset = 0.0f) {
  constexpr int64_t kRank = 24;
  const Tensor basis = random_matrix(kRank, d, 1234);  // shared by bank and queries
  const Tensor coef = random_matrix(rows, kRank, seed);
  const Tensor noise = random_matrix(rows, d, seed + 1);
  Tensor t({rows, d});
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < d; ++j) {
      float v = offset + 0.3f * noise.row(i)[j];
      for (int64_t r = 0; r < kRank; ++r)
        v += coef.row(i)[r] * basis.row(r)[j] * 3.0f / static_cast<float>(1 + r);
      t.row(i)[j] = v;
    }
  return t;
}

void expect_identical(const Result& got, const Result& ref) {
  EXPECT_EQ(got.idx, ref.idx);
  EXPECT_EQ(got.dist, ref.dist);
}

TEST(Knn, BoundedSearchIsTheBruteForceExactly) {
  const Tensor bank = feature_like(3000, 256, 20);
  Tensor q = feature_like(200, 256, 30);
  // Queries equal to bank rows and far outliers too.
  for (int64_t i = 0; i < 20; ++i) std::copy_n(bank.row(i * 97), 256, q.row(i));
  for (int64_t i = 20; i < 30; ++i)
    for (int64_t j = 0; j < 256; ++j) q.row(i)[j] *= 8.0f;
  // One bound on 32 directions; on 64 with no coarse stage, or a coarse one on 8 or 32.
  for (auto [p, coarse] : {std::pair{32, 32}, {64, 0}, {64, 8}, {64, 32}}) {
    const NearestNeighbors nn(bank, KnnOptions{2, p, 1000, coarse});
    ASSERT_TRUE(nn.bounded());
    for (int k : {1, 3, 9}) {
      SCOPED_TRACE(::testing::Message() << "p=" << p << " coarse=" << coarse << " k=" << k);
      const Result got = run(nn, q, k);
      expect_identical(got, run_reference(bank, q, k));
      for (int64_t i = 0; i < 20; ++i) EXPECT_EQ(got.dist[i * k], 0.0f);
    }
    // The point of the bound: most rows are never measured on data like this.
    EXPECT_LT(nn.exact_per_query(), 3000.0 / 10);
    EXPECT_GE(nn.exact_per_query(), 1.0);
  }
}

TEST(Knn, BoundedSearchStaysExactWhereTheBoundIsLoose) {
  // Isotropic data (no direction stands out) with a large offset and exact duplicates: the
  // bound prunes little, the float cross term works on big norms, ties must go by index.
  Tensor bank = random_matrix(2500, 128, 40);
  for (float& v : bank.data) v = 100.0f + v;
  for (int64_t dup : {700, 1800, 2499}) std::copy_n(bank.row(5), 128, bank.row(dup));
  Tensor q = random_matrix(64, 128, 41);
  for (float& v : q.data) v = 100.0f + v;
  std::copy_n(bank.row(5), 128, q.row(0));
  const NearestNeighbors nn(bank, KnnOptions{1, 16, 0});
  ASSERT_TRUE(nn.bounded());
  for (int k : {1, 4, 6}) expect_identical(run(nn, q, k), run_reference(bank, q, k));
  // The same with 192 columns and 48 directions.
  Tensor wide = random_matrix(2500, 192, 44);
  for (float& v : wide.data) v = 100.0f + v;
  Tensor wq = random_matrix(64, 192, 45);
  for (float& v : wq.data) v = 100.0f + v;
  const NearestNeighbors two_stage(wide, KnnOptions{2, 48, 0});
  ASSERT_TRUE(two_stage.bounded());
  for (int k : {1, 4}) expect_identical(run(two_stage, wq, k), run_reference(wide, wq, k));
  const Result r = run(nn, q, 4);
  EXPECT_EQ(std::vector<int64_t>(r.idx.begin(), r.idx.begin() + 4),
            (std::vector<int64_t>{5, 700, 1800, 2499}));
  // Tiny magnitudes: the slack is relative, so nothing underflows into a wrong skip.
  Tensor small = feature_like(2100, 128, 42);
  for (float& v : small.data) v *= 1e-4f;
  Tensor sq = feature_like(50, 128, 43);
  for (float& v : sq.data) v *= 1e-4f;
  const NearestNeighbors tiny(small, KnnOptions{2, 16, 0});
  ASSERT_TRUE(tiny.bounded());
  expect_identical(run(tiny, sq, 2), run_reference(small, sq, 2));
}

TEST(Knn, BoundedSearchIgnoresThreadsAndBatches) {
  const Tensor bank = feature_like(2600, 256, 50);
  const Tensor q = feature_like(700, 256, 60);
  const Result one = run(NearestNeighbors(bank, KnnOptions{1, 48, 0}), q, 3);
  const Result two = run(NearestNeighbors(bank, KnnOptions{2, 48, 0}), q, 3);
  expect_identical(one, two);
  // Changing the count later keeps the bound and the answer.
  NearestNeighbors changed(bank, KnnOptions{2, 48, 0});
  changed.set_threads(1);
  EXPECT_TRUE(changed.bounded());
  expect_identical(run(changed, q, 3), one);
  // One query at a time gives the same rows as the batch.
  const NearestNeighbors nn(bank, KnnOptions{2, 48, 0});
  for (int64_t i = 0; i < 700; i += 99) {
    std::vector<float> dist(3);
    std::vector<int64_t> idx(3);
    nn.search(q.row(i), 1, 3, dist.data(), idx.data());
    EXPECT_EQ(idx, std::vector<int64_t>(one.idx.begin() + i * 3, one.idx.begin() + i * 3 + 3));
    EXPECT_EQ(dist, std::vector<float>(one.dist.begin() + i * 3, one.dist.begin() + i * 3 + 3));
  }
}

// The coarse stage stays while few rows get through it (rows with a few strong directions) and
// goes once many do (isotropic rows); the answers are the brute force's before and after.
TEST(Knn, CoarseStageOnlyWhileItPays) {
  const Tensor structured = feature_like(3000, 256, 90);
  Tensor isotropic = random_matrix(3000, 256, 92);
  for (float& v : isotropic.data) v += 10.0f;
  for (const Tensor* bank : {&structured, static_cast<const Tensor*>(&isotropic)}) {
    const bool tight = bank == &structured;
    const Tensor q = tight ? feature_like(1100, 256, 91) : random_matrix(1100, 256, 93);
    NearestNeighbors nn(*bank, KnnOptions{2, 64, 0, 32});
    EXPECT_TRUE(nn.coarse_stage());
    Tensor first({500, 256});
    std::copy_n(q.data.begin(), first.numel(), first.data.begin());
    expect_identical(run(nn, first, 2), run_reference(*bank, first, 2));
    EXPECT_TRUE(nn.coarse_stage()) << "decided on fewer than 1,000 queries";
    expect_identical(run(nn, q, 2), run_reference(*bank, q, 2));
    EXPECT_EQ(nn.coarse_stage(), tight);
    expect_identical(run(nn, q, 2), run_reference(*bank, q, 2));  // without it, if it went
  }
}

TEST(Knn, BoundOnlyWhereItCanPay) {
  const Tensor bank = feature_like(3000, 256, 70);
  EXPECT_TRUE(NearestNeighbors(bank, KnnOptions{1, 64, 2048}).bounded());
  EXPECT_FALSE(NearestNeighbors(bank, KnnOptions{1, 65, 2048}).bounded());  // D < 4 p
  EXPECT_FALSE(NearestNeighbors(bank, KnnOptions{1, 0, 0}).bounded());
  EXPECT_FALSE(NearestNeighbors(bank, KnnOptions{1, 32, 3001}).bounded());
  EXPECT_THROW(NearestNeighbors(bank, KnnOptions{1, 64, 0, -1}), Error);
  // The default: banks of at least 2,048 rows and 512 columns.
  EXPECT_FALSE(NearestNeighbors(bank, 1).bounded());
  EXPECT_TRUE(NearestNeighbors(random_matrix(2048, 512, 71), 1).bounded());
  EXPECT_FALSE(NearestNeighbors(random_matrix(2047, 512, 72), 1).bounded());
}

TEST(Knn, SquaredDistanceIsAccurate) {
  for (int64_t d : {1, 7, 8, 9, 1056}) {
    const Tensor a = random_matrix(1, d, 80), b = random_matrix(1, d, 81);
    long double exact = 0;
    for (int64_t j = 0; j < d; ++j)
      exact += (static_cast<long double>(a.ptr()[j]) - b.ptr()[j]) *
               (static_cast<long double>(a.ptr()[j]) - b.ptr()[j]);
    EXPECT_NEAR(squared_distance(a.ptr(), b.ptr(), d), static_cast<double>(exact),
                static_cast<double>(exact) * (d / 8 + 3) * 0x1p-53);
  }
}

// The bf16 screen (where the CPU has bf16 kernels): knn_reference's answer bit for bit, on
// data where bf16's rounding is far coarser than the gaps between neighbours.
#define SKIP_WITHOUT_BF16_SCREEN()                                                        \
  if (!bf16_screen_available()) {                                                         \
    GTEST_SKIP() << "oneDNN has no bf16 kernels on this CPU: the bf16 screen cannot run " \
                    "here (FAISS's brute force is used)";                                 \
  }

Result run_screen(const Bf16Screen& screen, const Tensor& q, int k, int threads) {
  Result r{std::vector<float>(q.dim(0) * k), std::vector<int64_t>(q.dim(0) * k)};
  screen.search(q.ptr(), q.dim(0), k, threads, r.dist.data(), r.idx.data());
  return r;
}

TEST(Bf16Screen, IsTheReferenceExactly) {
  SKIP_WITHOUT_BF16_SCREEN();
  struct Case {
    int64_t m, n, d;
    int k;
  };
  // One query; one partial block; several blocks with a partial last one; odd dimensions.
  for (const Case& c : {Case{1, 1, 1, 1}, Case{7, 3, 5, 7}, Case{300, 19, 64, 1},
                        Case{588, 600, 1056, 1}, Case{2000, 300, 130, 5}, Case{5000, 40, 256, 3}}) {
    SCOPED_TRACE(::testing::Message()
                 << "m=" << c.m << " n=" << c.n << " d=" << c.d << " k=" << c.k);
    const Tensor bank = feature_like(c.m, c.d, 70);
    const Tensor q = feature_like(c.n, c.d, 71);
    const Bf16Screen screen(bank);
    expect_identical(run_screen(screen, q, c.k, 2), run_reference(bank, q, c.k));
    EXPECT_GE(screen.exact_per_query(), c.k);
  }
}

TEST(Bf16Screen, SignedDataAndLargeOffsets) {
  SKIP_WITHOUT_BF16_SCREEN();
  // Signed values around a large common offset: the centring takes the offset out; without
  // it the products' rounding would swamp the distances.
  Tensor bank = random_matrix(1500, 200, 72);
  for (float& v : bank.data) v = 1000.0f + v;
  Tensor q = random_matrix(100, 200, 73);
  for (float& v : q.data) v = 1000.0f + v;
  const Bf16Screen screen(bank);
  for (int k : {1, 4}) expect_identical(run_screen(screen, q, k, 2), run_reference(bank, q, k));
  EXPECT_LT(screen.exact_per_query(), 1500.0 / 4);
}

TEST(Bf16Screen, NeighboursCloserThanBf16CanTellApart) {
  SKIP_WITHOUT_BF16_SCREEN();
  // 64 rows at almost the same distance from the query (differences near 1e-6 of it, far
  // below bf16's 2^-8): the screen cannot order them, so it must measure them all, and the
  // exact order (ties by index) decides. Plus duplicates of the query itself.
  const int64_t d = 96;
  Tensor bank = random_matrix(400, d, 74);
  Tensor q({2, d});
  for (int64_t j = 0; j < d; ++j) q.row(0)[j] = q.row(1)[j] = 0.5f;
  for (int64_t r = 0; r < 64; ++r) {
    for (int64_t j = 0; j < d; ++j) bank.row(100 + r)[j] = 0.5f + (j == r % d ? 1.0f : 0.0f);
    bank.row(100 + r)[(r + 1) % d] += 1e-6f * static_cast<float>(r % 5);
  }
  std::copy_n(q.row(0), d, bank.row(390));
  std::copy_n(q.row(0), d, bank.row(20));
  const Bf16Screen screen(bank);
  for (int k : {1, 2, 3, 10, 66}) {
    SCOPED_TRACE(k);
    const Result got = run_screen(screen, q, k, 1);
    expect_identical(got, run_reference(bank, q, k));
    EXPECT_EQ(got.idx[0], 20);
    EXPECT_EQ(got.dist[0], 0.0f);
  }
}

TEST(Bf16Screen, ThreadsAndBatchesDoNotChangeTheAnswer) {
  SKIP_WITHOUT_BF16_SCREEN();
  const Tensor bank = feature_like(3000, 160, 75);
  const Tensor q = feature_like(1000, 160, 76);
  const Bf16Screen screen(bank);
  const Result two = run_screen(screen, q, 3, 2);
  expect_identical(run_screen(screen, q, 3, 1), two);
  // Query by query, as a single-image batch would.
  Result one_by_one{std::vector<float>(3000), std::vector<int64_t>(3000)};
  for (int64_t i = 0; i < 1000; ++i)
    screen.search(q.row(i), 1, 3, 2, one_by_one.dist.data() + i * 3, one_by_one.idx.data() + i * 3);
  expect_identical(one_by_one, two);
}

TEST(Bf16Screen, NonFiniteRowsAndQueriesAreMeasuredNotSkipped) {
  SKIP_WITHOUT_BF16_SCREEN();
  // Whatever the reference makes of a NaN or an infinity, the screen must not rule a row out
  // on an interval it cannot trust: such rows and queries are measured exactly.
  Tensor bank = feature_like(200, 32, 77);
  bank.row(50)[3] = std::numeric_limits<float>::infinity();
  Tensor q = feature_like(5, 32, 78);
  q.row(2)[0] = std::numeric_limits<float>::infinity();
  const Result got = run_screen(Bf16Screen(bank), q, 2, 1);
  const Result ref = run_reference(bank, q, 2);
  for (int64_t i : {0, 1, 3, 4}) {
    EXPECT_EQ(got.idx[i * 2], ref.idx[i * 2]);
    EXPECT_EQ(got.dist[i * 2], ref.dist[i * 2]);
    EXPECT_NE(got.idx[i * 2], 50);
  }
  EXPECT_TRUE(std::isinf(got.dist[2 * 2]));
}

TEST(Bf16Screen, NearestNeighborsTakesItWhereItPays) {
  const Tensor bank = feature_like(300, 64, 79);
  const Tensor q = feature_like(50, 64, 80);
  KnnOptions off{1, 0};
  off.bf16_screen = false;
  EXPECT_STREQ(NearestNeighbors(bank, off).method(), "brute force");
  const NearestNeighbors automatic(bank, KnnOptions{2, 0});
  EXPECT_STREQ(automatic.method(), bf16_screen_pays() ? "bf16 screen" : "brute force");
  expect_identical(run(automatic, q, 2), run_reference(bank, q, 2));
  // The bound keeps the banks it takes.
  EXPECT_STREQ(NearestNeighbors(feature_like(2500, 256, 81), KnnOptions{2, 32, 1000}).method(),
               "bounded");
  if (!bf16_screen_available()) {
    EXPECT_THROW(Bf16Screen{bank}, Error);
  }
}

}  // namespace
}  // namespace patchcore
