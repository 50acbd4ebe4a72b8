#include "coreset.h"

#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <numbers>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "blas.h"
#include "error.h"
#include "omp_threads.h"
#include "principal_directions.h"

namespace patchcore {
namespace {

// Exact-pick argument (why greedy_coreset and greedy_coreset_reference agree bit for bit):
//  * both run on the same projected float rows (coreset_project sums over D in index order, so
//    the bits do not depend on threads or blocking) and the same start distances;
//  * every distance is coreset_sq_distance(): direct differences, squared and added into 16
//    lane accumulators in a fixed order, then a fixed pairwise tree. The fast path's
//    four-at-a-time min_sq_distance() spells out the same per-lane sub, mul and add in the
//    same order and the same tail and tree, and the project builds in ISO C++ mode
//    (-std=c++20, which implies -ffp-contract=off: no FMA contraction can make two code paths
//    round differently). Vector clones (AVX2 / SSE2) give the same bits too: each lane does
//    the same IEEE sub, mul, add.
//  * minima are exact: min() over the same float values in any order gives the same float
//    (no NaN, and sums of squares are never -0), so updating a row late, with several picks
//    at once, gives the value the reference holds after the same picks;
//  * the fast path only ever skips a pick for a run of rows when it can prove that the new
//    distance is >= every row's current minimum, in which case min() would return the old
//    value anyway;
//  * argmax ties go to the lowest index in both (strict > in index order within a run, the
//    heap orders runs by (value, lowest index)).
// Direct differences rather than ||x||^2 - 2 x.y + ||y||^2: a sum of non-negative terms has a
// small relative error bound (used by the skip test below), duplicate rows give exactly 0,
// and there is no cancellation.
constexpr int kLanes = 16;

// Relative error bound of coreset_sq_distance against the exact squared distance: each term
// sees one subtraction, one multiplication, ceil(d / 16) lane additions and 4 tree additions;
// doubled for slack. Plus an absolute term for underflow (values near FLT_MIN).
double relative_error_bound(int64_t d) {
  const double roundings = static_cast<double>((d + kLanes - 1) / kLanes + 6);
  return 2.0 * roundings * std::ldexp(1.0, -24);
}
double absolute_error_bound(int64_t d) { return static_cast<double>(d + kLanes) * FLT_MIN; }

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Unbiased integer in [0, n) by rejection: std::uniform_int_distribution is
// implementation-defined, and the picks must not depend on the standard library.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t reject_below = (0 - n) % n;  // 2^64 mod n
  for (;;) {
    const uint64_t x = rng();
    if (x >= reject_below) return x % n;
  }
}

// Floyd's sampling: `count` distinct rows of [0, n), in ascending order.
std::vector<int64_t> distinct_rows(uint64_t seed, int64_t n, int64_t count) {
  std::mt19937_64 rng(splitmix64(seed ^ 0x5354415254ull));  // own stream, not the projection's
  std::set<int64_t> chosen;
  for (int64_t j = n - count; j < n; ++j) {
    const auto t = static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(j) + 1));
    if (!chosen.insert(t).second) chosen.insert(j);
  }
  return {chosen.begin(), chosen.end()};
}

int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

// The rows the greedy search runs on: the projection, or the features themselves when
// D <= proj_dim (no copy).
struct Points {
  Tensor projected;
  const float* data = nullptr;
  int64_t n = 0;
  int64_t dim = 0;
};

MatrixView view_of(const Tensor& features) {
  if (features.shape.size() != 2) throw_usage("coreset: features must be a 2-D [rows, dim] tensor");
  PATCHCORE_ASSERT(features.numel() == features.dim(0) * features.dim(1));
  return {features.ptr(), features.dim(0), features.dim(1)};
}

void check_params(MatrixView features, const CoresetParams& p) {
  PATCHCORE_ASSERT(features.rows >= 0);
  if (features.cols < 1) throw_usage("coreset: features have dimension 0");
  PATCHCORE_ASSERT(features.data != nullptr || features.rows == 0);
  if (!(p.ratio > 0.0))
    throw_usage("coreset: ratio must be > 0 (got " + std::to_string(p.ratio) + ")");
  if (p.min_picks < 0)
    throw_usage("coreset: the minimum size must be >= 0 (got " + std::to_string(p.min_picks) + ")");
  if (p.proj_dim < 1)
    throw_usage("coreset: projection dimension must be >= 1 (got " + std::to_string(p.proj_dim) +
                ")");
  if (p.start_points < 1)
    throw_usage("coreset: start_points must be >= 1 (got " + std::to_string(p.start_points) + ")");
}

Tensor project_rows(MatrixView features, const std::vector<float>& matrix, int proj_dim,
                    int threads);

void check_points(const Points& pts, int threads);

Points prepare_points(MatrixView features, const CoresetParams& p, int threads) {
  Points pts;
  pts.n = features.rows;
  if (features.cols > p.proj_dim) {
    const auto matrix = coreset_projection_matrix(features.cols, p.proj_dim, p.seed);
    pts.projected = project_rows(features, matrix, p.proj_dim, threads);
    pts.data = pts.projected.ptr();
    pts.dim = p.proj_dim;
  } else {
    pts.data = features.data;
    pts.dim = features.cols;
  }
  check_points(pts, threads);
  return pts;
}

void check_points(const Points& pts, int threads) {
  // Bounded values keep every squared distance finite (|v| <= 1e17 and d <= 2^20 give sums
  // far below FLT_MAX), which the comparisons and the skip bounds rely on.
  const float* z = pts.data;
  const int64_t count = pts.n * pts.dim;
  bool ok = true;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(&& : ok) \
    if (count >= (int64_t{1} << 20))
  for (int64_t i = 0; i < count; ++i) ok = ok && std::fabs(z[i]) <= 1e17f;
  if (!ok) throw_usage("coreset: features contain NaN, infinity or values beyond 1e17");
  if (pts.dim > (int64_t{1} << 20))
    throw_usage("coreset: dimension " + std::to_string(pts.dim) + " is too large (max 2^20)");
}

// Squared start distance of every row: (mean L2 distance to the start rows)^2, in double.
std::vector<float> start_distances(const Points& pts, const CoresetParams& p, int threads) {
  const int64_t count = std::min<int64_t>(p.start_points, pts.n);
  const auto starts = distinct_rows(p.seed, pts.n, count);
  std::vector<float> mind(static_cast<size_t>(pts.n));
#pragma omp parallel for schedule(static) \
    num_threads(threads) if (pts.n * pts.dim * count >= (int64_t{1} << 20))
  for (int64_t i = 0; i < pts.n; ++i) {
    double sum = 0.0;
    for (int64_t s : starts)
      sum += std::sqrt(static_cast<double>(
          coreset_sq_distance(pts.data + i * pts.dim, pts.data + s * pts.dim, pts.dim)));
    const double mean = sum / static_cast<double>(count);
    mind[i] = static_cast<float>(mean * mean);
  }
  return mind;
}

int64_t pick_count(const CoresetParams& p, int64_t n) {
  const double k = std::floor(p.ratio * static_cast<double>(n));
  return std::clamp<int64_t>(std::max(static_cast<int64_t>(k), p.min_picks), 1, n);
}

int64_t argmax_lowest(const std::vector<float>& v) {
  int64_t best = 0;
  for (int64_t i = 1; i < static_cast<int64_t>(v.size()); ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

std::vector<int64_t> all_rows(int64_t n) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), int64_t{0});
  return all;
}

}  // namespace

std::vector<float> coreset_projection_matrix(int64_t d, int proj_dim, uint64_t seed) {
  PATCHCORE_ASSERT(d >= 0 && proj_dim >= 1);
  std::mt19937_64 rng(splitmix64(seed ^ 0x50524f4aull));
  const double scale = 1.0 / std::sqrt(static_cast<double>(proj_dim));
  const size_t count = static_cast<size_t>(d) * static_cast<size_t>(proj_dim);
  std::vector<float> m(count);
  // Box-Muller on 53-bit uniforms: u1 in (0, 1] keeps the log finite.
  for (size_t i = 0; i < count; i += 2) {
    const double u1 = (static_cast<double>(rng() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 2.0 * std::numbers::pi * u2;
    m[i] = static_cast<float>(r * std::cos(a) * scale);
    if (i + 1 < count) m[i + 1] = static_cast<float>(r * std::sin(a) * scale);
  }
  return m;
}

Tensor coreset_project(const Tensor& features, const std::vector<float>& matrix, int proj_dim,
                       int threads) {
  PATCHCORE_ASSERT(features.shape.size() == 2);
  return project_rows({features.ptr(), features.dim(0), features.dim(1)}, matrix, proj_dim,
                      threads);
}

Tensor coreset_project(MatrixView features, const std::vector<float>& matrix, int proj_dim,
                       int threads) {
  return project_rows(features, matrix, proj_dim, threads);
}

Tensor coreset_search_rows(MatrixView features, int proj_dim, uint64_t seed, int threads) {
  if (features.cols > proj_dim)
    return project_rows(features, coreset_projection_matrix(features.cols, proj_dim, seed),
                        proj_dim, threads);
  Tensor copy({features.rows, features.cols});
  std::copy_n(features.data, features.rows * features.cols, copy.ptr());
  return copy;
}

namespace {

Tensor project_rows(MatrixView features, const std::vector<float>& matrix, int proj_dim,
                    int threads) {
  PATCHCORE_ASSERT(proj_dim >= 1);
  const int64_t n = features.rows;
  const int64_t d = features.cols;
  PATCHCORE_ASSERT(static_cast<int64_t>(matrix.size()) == d * proj_dim);
  Tensor out({n, proj_dim});
  // Fixed chunks of rows, one single-threaded sgemm each: which thread runs a chunk cannot
  // change its bits. The thread count is set to 1 around the loop so that OpenBLAS (OpenMP
  // build) does not start threads of its own inside a team of one.
  constexpr int64_t kChunk = 1024;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int team = resolve_threads(threads);
  OmpThreadsGuard single(1);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t r0 = c * kChunk;
    // Column-major view: out^T [pd, rows] = matrix^T [pd, d] * features^T [d, rows].
    const int m = proj_dim, rows = static_cast<int>(std::min(kChunk, n - r0)),
              k = static_cast<int>(d);
    const float one = 1.0f, zero = 0.0f;
    sgemm_("N", "N", &m, &rows, &k, &one, matrix.data(), &m, features.data + r0 * d, &k, &zero,
           out.ptr() + r0 * proj_dim, &m);
  }
  return out;
}

}  // namespace

// AVX2 and the default clone give the same bits: 16 independent lanes, each the same IEEE
// sub, mul and add in the same order, and the same tree.
#if defined(__clang__)  // clang refuses noinline beside target_clones (the fuzzing build)
__attribute__((target_clones("avx2", "default"))) float coreset_sq_distance(
#else
__attribute__((noinline, target_clones("avx2", "default"))) float coreset_sq_distance(
#endif
    const float* a, const float* b, int64_t d) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float t = a[j + l] - b[j + l];
      acc[l] += t * t;
    }
  for (int l = 0; j + l < d; ++l) {
    const float t = a[j + l] - b[j + l];
    acc[l] += t * t;
  }
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

using Vec8 = float __attribute__((vector_size(32)));
using Vec8u = float __attribute__((vector_size(32), aligned(4)));  // for unaligned loads

// The 16 lane accumulators of one distance, then tail and tree exactly as coreset_sq_distance.
inline float finish_distance(const Vec8& lo, const Vec8& hi, const float* x, const float* y,
                             int64_t j, int64_t d) {
  float acc[kLanes];
  for (int l = 0; l < 8; ++l) {
    acc[l] = lo[l];
    acc[l + 8] = hi[l];
  }
  for (int l = 0; j + l < d; ++l) {
    const float t = x[j + l] - y[j + l];
    acc[l] += t * t;
  }
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// The smallest coreset_sq_distance(x, y) over the rows y = ys + idx[m] * d, m < count, and
// `init`. Four rows at a time: 8 independent vector accumulators instead of the 2 dependent
// chains of one call keep the adders busy; a last short group repeats its final row (min() of
// a value already taken changes nothing). Each distance runs the same lane operations in the
// same order and the same tree as coreset_sq_distance (GCC vector types are element-wise IEEE,
// split into halves without AVX), so the bits and hence the minimum are the same.
__attribute__((target_clones("avx2", "default"))) float min_sq_distance(
    const float* x, const float* ys, const int64_t* idx, int count, int64_t d, float init) {
  float v = init;
  for (int m = 0; m < count; m += 4) {
    const int last = count - 1;
    const float* y0 = ys + idx[m] * d;
    const float* y1 = ys + idx[std::min(m + 1, last)] * d;
    const float* y2 = ys + idx[std::min(m + 2, last)] * d;
    const float* y3 = ys + idx[std::min(m + 3, last)] * d;
    Vec8 l0{}, h0{}, l1{}, h1{}, l2{}, h2{}, l3{}, h3{};
    int64_t j = 0;
    for (; j + kLanes <= d; j += kLanes) {
      const Vec8 x0 = *reinterpret_cast<const Vec8u*>(x + j);
      const Vec8 x1 = *reinterpret_cast<const Vec8u*>(x + j + 8);
      Vec8 t;
      t = x0 - *reinterpret_cast<const Vec8u*>(y0 + j), l0 += t * t;
      t = x1 - *reinterpret_cast<const Vec8u*>(y0 + j + 8), h0 += t * t;
      t = x0 - *reinterpret_cast<const Vec8u*>(y1 + j), l1 += t * t;
      t = x1 - *reinterpret_cast<const Vec8u*>(y1 + j + 8), h1 += t * t;
      t = x0 - *reinterpret_cast<const Vec8u*>(y2 + j), l2 += t * t;
      t = x1 - *reinterpret_cast<const Vec8u*>(y2 + j + 8), h2 += t * t;
      t = x0 - *reinterpret_cast<const Vec8u*>(y3 + j), l3 += t * t;
      t = x1 - *reinterpret_cast<const Vec8u*>(y3 + j + 8), h3 += t * t;
    }
    v = std::min(v, finish_distance(l0, h0, x, y0, j, d));
    v = std::min(v, finish_distance(l1, h1, x, y1, j, d));
    v = std::min(v, finish_distance(l2, h2, x, y2, j, d));
    v = std::min(v, finish_distance(l3, h3, x, y3, j, d));
  }
  return v;
}

// The cheap test per row and pick: the squared distance of their coordinates along the 16
// principal directions of the projected rows (orthonormal, so never above the full squared
// distance). On CNN patch features about 6 % of the row-pick pairs pass it (magnetic_tile), for
// an eighth of the cost of the full distance. Coordinates are computed in
// double and stored as float; the float sum of 16 squares is then within 4e-6 of itself, the
// storage rounding within 5e-7 (|y_x|^2 + |y_c|^2) and the double arithmetic within 1e-13
// (|x - mean|^2 + |c - mean|^2) of the exact value, so subtracting 4e-6 of the sum and a slack
// of 1e-5 |y|^2 + 1e-12 |x - mean|^2 per row keeps it a lower bound.
struct SubspaceBound {
  static constexpr int kDim = kCoresetSubspaceDim;
  std::vector<float> coords;  // [n, kDim]
  std::vector<float> slack;   // 1e-5 |y|^2 + 1e-12 |x - mean|^2 per row
  bool empty() const { return coords.empty(); }
};

SubspaceBound subspace_bound(const float* rows, int64_t n, int64_t dim, int threads) {
  SubspaceBound b;
  constexpr int q = SubspaceBound::kDim;
  if (dim < 4 * q || n < 1024) return b;  // too few columns or rows to pay for itself
  const PrincipalDirections pd = principal_directions(rows, n, dim, q, threads);
  if (pd.p != q) return b;
  b.coords.resize(static_cast<size_t>(n * q));
  b.slack.resize(static_cast<size_t>(n));
  constexpr int64_t kBlock = 1024;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  // BLAS inside the loop runs single-threaded, also in a team of one (see coreset_project).
  OmpThreadsGuard single(1);
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> y(static_cast<size_t>(kBlock * q)), centred(static_cast<size_t>(kBlock));
#pragma omp for schedule(static)
    for (int64_t k = 0; k < blocks; ++k) {
      const int64_t r0 = k * kBlock, rows_here = std::min(kBlock, n - r0);
      project_centred(pd, rows + r0 * dim, rows_here, dim, y.data(), centred.data());
      for (int64_t i = 0; i < rows_here; ++i) {
        double sq = 0.0;
        for (int l = 0; l < q; ++l) {
          const float f = static_cast<float>(y[i * q + l]);
          b.coords[(r0 + i) * q + l] = f;
          sq += double(f) * double(f);
        }
        b.slack[r0 + i] = static_cast<float>(1e-5 * sq + 1e-12 * centred[i]);
      }
    }
  }
  return b;
}

// The smallest float >= v.
inline float float_at_least(double v) {
  const float f = static_cast<float>(v);
  return static_cast<double>(f) >= v ? f
                                     : std::nextafter(f, std::numeric_limits<float>::infinity());
}

// Writes to out the picks (of a tile of `count`, coordinates transposed [kDim, 64]) whose
// subspace lower bound, less the pick's slack, is below `threshold` (which holds the row's
// minimum and the row's slack); returns how many. The factor 1 - 5e-6 covers the float sum
// (4e-6; fused multiply-adds round less, not more) and the rounding of this arithmetic (1e-6,
// many ulps). Across picks, so it vectorises; the tests are gathered as bytes and read 8 at a
// time, since few picks pass (about 6 % on CNN features) and a branch per pick cost as much as
// the sums.

template <bool kFused>
__attribute__((always_inline)) inline int subspace_filter_body(const float* row,
                                                               const float* tile_coords,
                                                               const float* tile_slack,
                                                               const int64_t* kept, int count,
                                                               float threshold, int64_t* out) {
  alignas(32) float acc[kCoresetFilterTile] = {};
  for (int l = 0; l < SubspaceBound::kDim; ++l) {
    const float y = row[l];
    const float* c = tile_coords + l * kCoresetFilterTile;
    for (int m = 0; m < kCoresetFilterTile; ++m) {
      const float t = y - c[m];
      if constexpr (kFused)
        acc[m] = __builtin_fmaf(t, t, acc[m]);
      else
        acc[m] += t * t;
    }
  }
  alignas(32) uint8_t pass[kCoresetFilterTile];
  for (int m = 0; m < kCoresetFilterTile; ++m)
    pass[m] = acc[m] * (1.0f - 5e-6f) - tile_slack[m] < threshold ? 1 : 0;
  int n = 0;
  for (int g = 0; g * 8 < count; ++g) {
    uint64_t bytes;
    std::memcpy(&bytes, pass + g * 8, 8);
    if (count - g * 8 < 8) bytes &= (uint64_t{1} << (8 * (count - g * 8))) - 1;
    for (; bytes != 0; bytes &= bytes - 1) out[n++] = kept[g * 8 + __builtin_ctzll(bytes) / 8];
  }
  return n;
}

__attribute__((target("avx2,fma"))) int subspace_filter_fma(const float* row,
                                                            const float* tile_coords,
                                                            const float* tile_slack,
                                                            const int64_t* kept, int count,
                                                            float threshold, int64_t* out) {
  return subspace_filter_body<true>(row, tile_coords, tile_slack, kept, count, threshold, out);
}

int subspace_filter_plain(const float* row, const float* tile_coords, const float* tile_slack,
                          const int64_t* kept, int count, float threshold, int64_t* out) {
  return subspace_filter_body<false>(row, tile_coords, tile_slack, kept, count, threshold, out);
}

// The same for every call: FMA where the CPU has it.
int subspace_filter(const float* row, const float* tile_coords, const float* tile_slack,
                    const int64_t* kept, int count, float threshold, int64_t* out) {
  static const bool fused = coreset_fma_available();
  return fused ? subspace_filter_fma(row, tile_coords, tile_slack, kept, count, threshold, out)
               : subspace_filter_plain(row, tile_coords, tile_slack, kept, count, threshold, out);
}

// The fast path: lazy greedy. Rows come in runs of kRun consecutive rows (neighbouring patches
// of one image). A run remembers how many picks its minima include (`done`); a stale minimum is
// an upper bound of the true one, since further picks can only lower it. A heap orders the runs
// by (largest stale minimum, lowest row index holding it). When the top run is up to date, its
// best row is the reference's pick: every other row's true minimum is <= its stale one, which
// the heap order puts below the top or equal with a higher index. Otherwise the stale runs at
// the top are brought up to date (reading each row once for all the picks it missed, with the
// picks in cache) and pushed back. Runs whose rows are already well covered sink and are read
// rarely, instead of once per pick, which is what made the plain loop memory bound. Every
// minimum that is computed is the same min() over the same coreset_sq_distance() values as
// the reference (min is exact and order-free on these non-negative, non-NaN floats), so the
// picks are identical.
//
// Threads share the updates: each takes the top run while it is stale, updates it without the
// lock and pushes it back; a pick is made only when the top is up to date and no update is in
// flight, which is exactly the serial loop's condition, so the picks do not depend on the
// thread count or the timing. A thread may bring a run up to date that the serial loop would
// have left for a later pick; that moves work, it does not change a minimum.
//
// (An earlier per-run triangle-inequality skip was dropped: on the magnetic_tile and hei_med
// banks it ruled out 0.3 % and 0.01 % of the run-pick pairs, for a 128-dimensional distance
// per pair, and cost about 15 % of the loop.)
std::vector<int64_t> greedy_coreset(const Tensor& features, const CoresetParams& p,
                                    const CoresetProgress& progress) {
  return greedy_coreset(view_of(features), p, progress);
}

namespace {
std::vector<int64_t> greedy_search(const Points& pts, const CoresetParams& p, int threads,
                                   const CoresetProgress& progress, CoresetStats* stats);
}  // namespace

std::vector<int64_t> greedy_coreset(MatrixView features, const CoresetParams& p,
                                    const CoresetProgress& progress, CoresetStats* stats) {
  check_params(features, p);
  if (stats) *stats = {};
  const int64_t n = features.rows;
  if (n == 0) return {};
  if (p.ratio >= 1.0 || p.min_picks >= n) return all_rows(n);
  const int threads = resolve_threads(p.threads);
  return greedy_search(prepare_points(features, p, threads), p, threads, progress, stats);
}

std::vector<int64_t> greedy_coreset_projected(MatrixView projected, const CoresetParams& p,
                                              const CoresetProgress& progress,
                                              CoresetStats* stats) {
  check_params(projected, p);
  if (stats) *stats = {};
  const int64_t n = projected.rows;
  if (n == 0) return {};
  if (p.ratio >= 1.0 || p.min_picks >= n) return all_rows(n);
  const int threads = resolve_threads(p.threads);
  Points pts;
  pts.data = projected.data;
  pts.n = n;
  pts.dim = projected.cols;
  check_points(pts, threads);
  return greedy_search(pts, p, threads, progress, stats);
}

namespace {
std::vector<int64_t> greedy_search(const Points& pts, const CoresetParams& p, int threads,
                                   const CoresetProgress& progress, CoresetStats* stats) {
  const int64_t n = pts.n;
  const int64_t dim = pts.dim;
  const int64_t total = pick_count(p, n);
  PATCHCORE_ASSERT(total < std::numeric_limits<int32_t>::max());

  std::vector<float> mind = start_distances(pts, p, threads);
  std::vector<float> pick_rows(static_cast<size_t>(total * dim));
  const SubspaceBound sub = subspace_bound(pts.data, n, dim, threads);
  constexpr int q = SubspaceBound::kDim;
  std::vector<float> pick_coords(sub.empty() ? 0 : static_cast<size_t>(total * q));
  std::vector<float> pick_slack(sub.empty() ? 0 : static_cast<size_t>(total));

  constexpr int64_t kRun = 32;
  const int64_t runs = (n + kRun - 1) / kRun;
  std::vector<int32_t> done(static_cast<size_t>(runs), 0);
  struct Entry {
    float value;   // largest stale minimum of the run
    int64_t best;  // lowest row holding it
    int64_t run;
  };
  // Heap order: larger value first, then lower index.
  const auto below = [](const Entry& a, const Entry& b) {
    return a.value < b.value || (a.value == b.value && a.best > b.best);
  };
  const auto summary = [&](int64_t r) {
    const int64_t end = std::min(n, (r + 1) * kRun);
    int64_t best = r * kRun;
    for (int64_t i = best + 1; i < end; ++i)
      if (mind[i] > mind[best]) best = i;
    return Entry{mind[best], best, r};
  };
  // The subspace test's threshold per row holds the worst-case rounding of
  // coreset_sq_distance (relative_error_bound, absolute_error_bound).
  const double gamma = relative_error_bound(dim);
  const double abs_err = absolute_error_bound(dim);
  constexpr double kSlack = 1e-9;  // covers the double rounding in the thresholds themselves

  // Brings run r up to date with picks done[r] .. t - 1: picks in tiles that stay in cache,
  // each row read once per tile. Touches only run r's minima and done[r].
  const auto update = [&](int64_t r, int64_t t) {
    constexpr int kTile = kCoresetFilterTile;
    const int64_t begin = r * kRun;
    const int64_t end = std::min(n, begin + kRun);
    int64_t kept[kTile];
    alignas(32) float tile_coords[q * kTile] = {};  // the tile's coordinates, transposed
    alignas(32) float tile_slack[kTile] = {};
    for (int64_t c0 = done[r]; c0 < t; c0 += kTile) {
      const int count = static_cast<int>(std::min<int64_t>(kTile, t - c0));
      std::iota(kept, kept + count, c0);
      if (sub.empty()) {
        for (int64_t i = begin; i < end; ++i)
          mind[i] =
              min_sq_distance(pts.data + i * dim, pick_rows.data(), kept, count, dim, mind[i]);
        continue;
      }
      for (int m = 0; m < count; ++m) {
        for (int l = 0; l < q; ++l) tile_coords[l * kTile + m] = pick_coords[(c0 + m) * q + l];
        tile_slack[m] = pick_slack[c0 + m];
      }
      int64_t row_kept[kTile];
      for (int64_t i = begin; i < end; ++i) {
        // A pick is skipped for row i when its subspace bound is >= threshold, which implies
        // ((1 - gamma) bound - abs_err) (1 - kSlack) >= mind[i]: its computed distance could
        // not go below the row's minimum.
        const float threshold = float_at_least(
            (static_cast<double>(mind[i]) / (1 - kSlack) + abs_err) / (1.0 - gamma) + sub.slack[i]);
        const int row_count = subspace_filter(sub.coords.data() + i * q, tile_coords, tile_slack,
                                              kept, count, threshold, row_kept);
        if (row_count > 0)
          mind[i] = min_sq_distance(pts.data + i * dim, pick_rows.data(), row_kept, row_count, dim,
                                    mind[i]);
      }
    }
    done[r] = static_cast<int32_t>(t);
  };

  std::vector<Entry> heap;
  heap.reserve(static_cast<size_t>(runs));
  for (int64_t r = 0; r < runs; ++r) heap.push_back(summary(r));
  std::make_heap(heap.begin(), heap.end(), below);

  std::vector<int64_t> picks;
  picks.reserve(static_cast<size_t>(total));
  // Everything below `mutex` (the heap, picks, pick_rows and its companions, in_flight) is
  // touched under it only; a run's minima and done[] belong to the thread that popped the run.
  std::mutex mutex;
  int in_flight = 0;
  bool stop = false;  // the progress callback threw
  std::exception_ptr failure;
  float last_sq = 0;     // the latest pick's squared distance
  int64_t reported = 0;  // picks announced to `progress`, by the calling thread only
  const int64_t report_step = std::max<int64_t>(1, total / 1000);  // about 1,000 reports
  // Threads only pay when a pick needs several updates: on small inputs they would mostly wait.
  const int workers = n >= 4 * kRun * threads ? threads : 1;
#pragma omp parallel num_threads(workers) if (workers > 1)
  {
    const bool caller = omp_get_thread_num() == 0;
    std::unique_lock lock(mutex);
    for (;;) {
      const auto t = static_cast<int64_t>(picks.size());
      if (stop || t == total) break;
      if (caller && progress && t / report_step > reported / report_step) {
        // The calling thread reports, without the lock: a slow callback must not hold up the
        // others, and an exception must not leave the parallel region.
        lock.unlock();
        try {
          progress(t, total);
        } catch (...) {
          failure = std::current_exception();
        }
        lock.lock();
        reported = t;
        stop = failure != nullptr;
        continue;
      }
      if (done[heap.front().run] != t) {
        std::pop_heap(heap.begin(), heap.end(), below);
        const int64_t r = heap.back().run;
        heap.pop_back();
        ++in_flight;
        lock.unlock();
        update(r, t);
        const Entry fresh = summary(r);
        lock.lock();
        heap.push_back(fresh);
        std::push_heap(heap.begin(), heap.end(), below);
        --in_flight;
      } else if (in_flight == 0) {
        const int64_t pick = heap.front().best;
        last_sq = heap.front().value;
        picks.push_back(pick);
        const float* prow = pts.data + pick * dim;
        std::copy(prow, prow + dim, pick_rows.begin() + t * dim);
        if (!sub.empty()) {
          std::copy_n(sub.coords.data() + pick * q, q, pick_coords.begin() + t * q);
          pick_slack[t] = sub.slack[pick];
        }
      } else {
        // The top is up to date but an update in flight may push a larger run above it: wait
        // for it (one update: 90 microseconds on average on magnetic_tile).
        lock.unlock();
        std::this_thread::yield();
        lock.lock();
      }
    }
  }
  if (failure) std::rethrow_exception(failure);
  if (progress && reported != total) progress(total, total);
  if (stats) stats->radius = std::sqrt(last_sq);
  return picks;
}
}  // namespace

std::vector<int64_t> coreset_extend(MatrixView rows, std::vector<float>& sq_distance, float radius,
                                    int64_t max_picks, int threads) {
  PATCHCORE_ASSERT(static_cast<int64_t>(sq_distance.size()) == rows.rows);
  const int team = resolve_threads(threads);
  const float limit = radius * radius;
  std::vector<int64_t> picks;
  while (max_picks < 0 || std::ssize(picks) < max_picks) {
    if (sq_distance.empty()) break;
    const int64_t pick = argmax_lowest(sq_distance);
    if (!(sq_distance[pick] > limit)) break;
    picks.push_back(pick);
    const float* prow = rows.row(pick);
#pragma omp parallel for schedule(static) num_threads(team) if (rows.rows >= 4096)
    for (int64_t i = 0; i < rows.rows; ++i)
      sq_distance[i] = std::min(sq_distance[i], coreset_sq_distance(rows.row(i), prow, rows.cols));
  }
  return picks;
}

bool coreset_fma_available() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

int coreset_subspace_filter(const float* row, const float* tile_coords, const float* tile_slack,
                            const int64_t* kept, int count, float threshold, int64_t* out,
                            bool fused) {
  PATCHCORE_ASSERT(count >= 0 && count <= kCoresetFilterTile);
  PATCHCORE_ASSERT(!fused || coreset_fma_available());
  return fused ? subspace_filter_fma(row, tile_coords, tile_slack, kept, count, threshold, out)
               : subspace_filter_plain(row, tile_coords, tile_slack, kept, count, threshold, out);
}

std::vector<int64_t> greedy_coreset_reference(const Tensor& tensor, const CoresetParams& p) {
  const MatrixView features = view_of(tensor);
  check_params(features, p);
  const int64_t n = features.rows;
  if (n == 0) return {};
  if (p.ratio >= 1.0 || p.min_picks >= n) return all_rows(n);
  const int threads = resolve_threads(p.threads);
  const Points pts = prepare_points(features, p, threads);
  const int64_t total = pick_count(p, n);
  std::vector<float> mind = start_distances(pts, p, threads);
  std::vector<int64_t> picks;
  for (int64_t t = 0; t < total; ++t) {
    const int64_t pick = argmax_lowest(mind);
    picks.push_back(pick);
    for (int64_t i = 0; i < n; ++i)
      mind[i] = std::min(
          mind[i], coreset_sq_distance(pts.data + i * pts.dim, pts.data + pick * pts.dim, pts.dim));
  }
  return picks;
}

}  // namespace patchcore
