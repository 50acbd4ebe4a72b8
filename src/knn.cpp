#include "knn.h"

#include <faiss/utils/distances.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <utility>

#include "bf16_screen.h"
#include "blas.h"
#include "error.h"
#include "omp_threads.h"
#include "principal_directions.h"

namespace patchcore {
namespace {

void check_bank(const Tensor& bank) {
  if (bank.shape.size() != 2)
    throw_usage("nearest neighbours: the memory bank must be a 2-D [rows, dim] tensor");
  if (bank.dim(1) < 1) throw_usage("nearest neighbours: the memory bank has dimension 0");
  PATCHCORE_ASSERT(bank.numel() == bank.dim(0) * bank.dim(1));
}

// k > bank rows is a usage error rather than a silent clamp: callers size their outputs [n, k]
// and a clamped answer would leave columns they then read as neighbours.
void check_k(const Tensor& bank, int k) {
  if (k < 1)
    throw_usage("nearest neighbours: k must be at least 1 (got " + std::to_string(k) + ")");
  if (k > bank.dim(0))
    throw_usage("nearest neighbours: k = " + std::to_string(k) + " exceeds the memory bank size " +
                std::to_string(bank.dim(0)));
}

// The lower bound behind the pruned search. P: orthonormal [D, p] (the bank's top principal
// directions), c: the bank mean. For a row x, z = P^T (x - c), r = |x - c - P z|. Since x - y
// splits into orthogonal parts P (z_x - z_y) and the residuals, and |r_x - r_y| <= |residual
// difference|, |x - y|^2 >= |z_x - z_y|^2 + (r_x - r_y)^2. The projections and residual norms
// are computed in double; only the cross term z_x . z_y runs in float (one sgemm, K = p), with
// rounding below gamma_p |z_x| |z_y| (Higham; gamma_128 = 7.6e-6); the float sums of the bound
// add a few ulp of |x - c|^2 + |y - c|^2. Subtracting a slack of (|x - c|^2 + |y - c|^2) times 1e-4
// p / 128 (more than ten times those errors together) keeps the float bound below the double
// distance. The principal directions only make the bound tight: any orthonormal P gives a valid
// one, so do its leading columns alone (the coarse bound, with their own residuals), and so
// does the fine bound computed from the differences z_x - z_y directly (projected_sq_distance).
constexpr double kSlackPer128 = 1e-4;  // scaled with p below, as gamma_p is

// A bound on the leading `dims` directions: |z_x - z_y|^2 over them (from |z|^2 and the cross
// term) plus (r_x - r_y)^2, r the norm beyond them.
struct BoundLevel {
  int dims = 0;
  std::vector<float> sq;     // |z|^2 of the float z's leading dims values
  std::vector<float> resid;  // r beyond them
};

struct ProjectionBound {
  int p = 0;
  PrincipalDirections directions;
  std::vector<float> proj;   // [M, p] the bank's z, rounded to float
  BoundLevel full;           // on all p directions
  BoundLevel coarse;         // on the leading ones (dims == p: none)
  std::vector<float> slack;  // the slack factor times |b - c|^2
};

// One row's values of a level (z: its p projections in double, f their floats).
void fill_level(BoundLevel& level, int64_t row, const double* z, const float* f, double cn) {
  double zn = 0.0, fn = 0.0;
  for (int j = 0; j < level.dims; ++j) {
    zn += z[j] * z[j];
    fn += double{f[j]} * double{f[j]};
  }
  level.sq[static_cast<size_t>(row)] = static_cast<float>(fn);
  level.resid[static_cast<size_t>(row)] = static_cast<float>(std::sqrt(std::max(0.0, cn - zn)));
}

void resize_level(BoundLevel& level, int dims, int64_t rows) {
  level.dims = dims;
  level.sq.resize(static_cast<size_t>(rows));
  level.resid.resize(static_cast<size_t>(rows));
}

// z, both levels and the slack of `rows` rows of x (row-major, d columns) into rows [r0, r0 +
// rows) of proj, full, coarse and slack. cn_all and z are scratch (resized here).
void project_rows(const PrincipalDirections& directions, const float* x, int64_t rows, int64_t d,
                  std::vector<double>& cn_all, std::vector<double>& z, float* proj,
                  BoundLevel& full, BoundLevel& coarse, float* slack, int64_t r0) {
  const int p = directions.p;
  cn_all.resize(static_cast<size_t>(rows));
  z.resize(static_cast<size_t>(rows * p));
  project_centred(directions, x, rows, d, z.data(), cn_all.data());
  for (int64_t i = 0; i < rows; ++i) {
    const double cn = cn_all[i];
    for (int j = 0; j < p; ++j) proj[i * p + j] = static_cast<float>(z[i * p + j]);
    fill_level(full, r0 + i, z.data() + i * p, proj + i * p, cn);
    if (coarse.dims < p) fill_level(coarse, r0 + i, z.data() + i * p, proj + i * p, cn);
    slack[i] = static_cast<float>(kSlackPer128 * std::max(1.0, p / 128.0) * cn);
  }
}

// The bound for a bank, or nothing when no principal directions come out (then search()
// stays brute force).
std::optional<ProjectionBound> build_bound(const Tensor& bank, int p, int coarse, int threads) {
  const int64_t m = bank.dim(0), d = bank.dim(1);
  ProjectionBound pb;
  pb.p = p;
  pb.directions = principal_directions(bank.ptr(), m, d, p, threads);
  if (pb.directions.p != p) return std::nullopt;
  pb.proj.resize(static_cast<size_t>(m * p));
  resize_level(pb.full, p, m);
  if (coarse > 0 && coarse < p) {
    resize_level(pb.coarse, coarse, m);
  } else {
    pb.coarse.dims = p;
  }
  pb.slack.resize(static_cast<size_t>(m));
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (m + kBlock - 1) / kBlock;
  const int team = threads > 0 ? threads : omp_get_max_threads();
  OmpThreadsGuard single(1);  // BLAS inside the loop runs single-threaded, even in a team of one
#pragma omp parallel num_threads(team)
  {
    std::vector<double> cn, z;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kBlock, rows = std::min(kBlock, m - r0);
      project_rows(pb.directions, bank.row(r0), rows, d, cn, z, pb.proj.data() + r0 * p, pb.full,
                   pb.coarse, pb.slack.data() + r0, r0);
    }
  }
  return pb;
}

// |a - b|^2 of two projections in float, eight lanes (so that it vectorises). Each lane sums
// p / 8 squares: the relative error stays below (p / 8 + 4) 2^-23, 2.4e-6 for p = 128, and
// |z_x - z_y|^2 <= 2 (|x - c|^2 + |y - c|^2): far inside the slack of 1e-4 (|x - c|^2 + |y - c|^2).
float projected_sq_distance(const float* a, const float* b, int p) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int t = 0;
  for (; t + 8 <= p; t += 8)
    for (int l = 0; l < 8; ++l) {
      const float v = a[t + l] - b[t + l];
      lane[l] += v * v;
    }
  for (int l = 0; t < p; ++t, ++l) {
    const float v = a[t] - b[t];
    lane[l] += v * v;
  }
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

// One level's bound of every bank row for one query (c: its cross terms). A loop of its own, on
// unaliased pointers, so that it vectorises.
void level_bounds(const BoundLevel& level, const float* __restrict slack, const float* __restrict c,
                  float qs, float qr, float qsl, float* __restrict bound, int64_t m) {
  const float* __restrict resid = level.resid.data();
  const float* __restrict proj_sq = level.sq.data();
  for (int64_t j = 0; j < m; ++j) {
    const float dr = qr - resid[j];
    bound[j] = qs + proj_sq[j] - 2.0f * c[j] + dr * dr - (qsl + slack[j]);
  }
}

// The position of the first smallest of v[0, m) (m >= 1; 0 when all are NaN). The smallest
// value is found eight at a time with GCC's vector extension, which compiles to SSE minps:
// without -ffast-math GCC does not vectorise a float minimum loop by itself.
int64_t first_minimum(const float* v, int64_t m) {
  using V4 = float __attribute__((vector_size(16)));
  const float inf = std::numeric_limits<float>::infinity();
  V4 lo0 = {inf, inf, inf, inf}, lo1 = lo0;
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    V4 a, b;
    std::memcpy(&a, v + j, sizeof a);
    std::memcpy(&b, v + j + 4, sizeof b);
    lo0 = a < lo0 ? a : lo0;
    lo1 = b < lo1 ? b : lo1;
  }
  float smallest = inf;
  for (int l = 0; l < 4; ++l) smallest = std::min({smallest, lo0[l], lo1[l]});
  for (; j < m; ++j) smallest = std::min(smallest, v[j]);
  const int64_t at = std::find(v, v + m, smallest) - v;
  return at < m ? at : 0;
}

// The smallest float >= v: comparing a float bound with it is comparing with v itself.
float next_float_up(double v) {
  const float f = static_cast<float>(v);
  return static_cast<double>(f) >= v ? f
                                     : std::nextafter(f, std::numeric_limits<float>::infinity());
}

// The k best (distance, row) pairs so far, ascending; ties by the lower row, as knn_reference
// orders them.
class BestK {
 public:
  explicit BestK(int k) : k_(k) { items_.reserve(static_cast<size_t>(k) + 1); }
  void clear() { items_.clear(); }
  bool full() const { return static_cast<int>(items_.size()) == k_; }
  double worst() const { return items_.back().first; }
  void offer(double dist, int64_t row) {
    const std::pair<double, int64_t> item{dist, row};
    if (full() && !(item < items_.back())) return;
    items_.insert(std::upper_bound(items_.begin(), items_.end(), item), item);
    if (static_cast<int>(items_.size()) > k_) items_.pop_back();
  }
  const std::vector<std::pair<double, int64_t>>& items() const { return items_; }

 private:
  int k_;
  std::vector<std::pair<double, int64_t>> items_;
};

}  // namespace

struct NearestNeighbors::Impl {
  Tensor bank;
  int threads = 0;
  std::vector<float> norms;  // ||b||^2 per bank row, computed once instead of per search
  std::optional<ProjectionBound> bound;
  std::unique_ptr<Bf16Screen> screen;  // instead of FAISS where the bound is not used
  mutable std::atomic<int64_t> queries{0}, measured{0};
  // The coarse stage, while it pays (see search_bounded): off for good once the rows it lets
  // through cost more full bounds than its smaller cross term saves.
  mutable std::atomic<bool> coarse_on{true};
  mutable std::atomic<int64_t> coarse_queries{0}, coarse_passed{0};

  void search_bounded(const float* queries, int64_t n, int k, float* sq_dist, int64_t* index) const;
};

// Queries go in blocks whose bound matrix [block, M] stays in cache (about 4 MB); each block is
// one thread's: projection (dgemm), cross term (sgemm), then per query a pass for the k rows
// with the smallest bounds (measured exactly to set the threshold) and a pass measuring every
// other row whose bound does not exceed the k-th best distance found so far. BLAS inside the
// parallel loop runs single-threaded (the OpenMP build of OpenBLAS, which scripts/setup installs,
// does so inside a parallel region), so nothing is oversubscribed.
//
// With the coarse stage the cross term covers the leading coarse.dims directions only, and a
// row that passes the coarse bound gets the full one (p multiply-adds on its projection) before
// being measured. That pays while the rows passing it are few: on magnetic_tile's bank (9,726
// rows) 31 per query passed 32 directions and the searches of 100 images took 7.0-7.2 s (summed
// over threads) against 9.6-10.9 s without; on hei_med's with the default floor (10,000 rows
// from 48 images, a loose bound) 884 passed and 60 images took 10.1-11.3 s against 8.3-9.0. A
// full bound cost 184 ns there, 1.4 ns per multiply-add, 40 times the cross term's GEMM (0.034
// ns per multiply-add), hence the rule: after kCoarseSample queries, the stage stays on while
// the rows passing it per query stay below M (p - coarse) / (40 p), where the two costs meet.
// Either way the answer is the same (both bounds are exact lower bounds); only the time differs.
constexpr int64_t kCoarseSample = 1000;
constexpr double kFullBoundCost = 40;  // per multiply-add, relative to the cross term's GEMM

void NearestNeighbors::Impl::search_bounded(const float* q, int64_t n, int k, float* sq_dist,
                                            int64_t* index) const {
  const ProjectionBound& pb = *bound;
  const int64_t m = bank.dim(0), d = bank.dim(1);
  const int p = pb.p;
  const bool coarse = pb.coarse.dims < p && coarse_on.load();
  const BoundLevel& first = coarse ? pb.coarse : pb.full;
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 20) / m, 8, 256);
  const int64_t blocks = (n + block - 1) / block;
  const int team =
      static_cast<int>(std::min<int64_t>(threads > 0 ? threads : omp_get_max_threads(), blocks));
  std::atomic<int64_t> total_measured{0}, total_passed{0};
#pragma omp parallel num_threads(team)
  {
    std::vector<double> cn, z;
    std::vector<float> qproj(static_cast<size_t>(block * p)), qslack(static_cast<size_t>(block));
    BoundLevel qfull, qcoarse;
    resize_level(qfull, p, block);
    if (pb.coarse.dims < p) {
      resize_level(qcoarse, pb.coarse.dims, block);
    } else {
      qcoarse.dims = p;
    }
    const BoundLevel& qfirst = coarse ? qcoarse : qfull;
    std::vector<float> cross(static_cast<size_t>(block * m)), bound_row(static_cast<size_t>(m));
    BestK seeds(k), best(k);
    int64_t my_measured = 0, my_passed = 0;
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t q0 = b * block, rows = std::min(block, n - q0);
      project_rows(pb.directions, q + q0 * d, rows, d, cn, z, qproj.data(), qfull, qcoarse,
                   qslack.data(), 0);
      // Column-major view: cross^T [m, rows] = proj [m, :dims] * qproj^T [:dims, rows].
      const int mm = static_cast<int>(m), nn = static_cast<int>(rows), kk = first.dims, ld = p;
      const float one = 1.0f, zero = 0.0f;
      sgemm_("T", "N", &mm, &nn, &kk, &one, pb.proj.data(), &ld, qproj.data(), &ld, &zero,
             cross.data(), &mm);
      for (int64_t i = 0; i < rows; ++i) {
        const float* query = q + (q0 + i) * d;
        const float* c = cross.data() + i * m;
        const float qsl = qslack[i];
        level_bounds(first, pb.slack.data(), c, qfirst.sq[i], qfirst.resid[i], qsl,
                     bound_row.data(), m);
        // The k smallest bounds seed the threshold (measured, then kept out of the next pass).
        seeds.clear();
        if (k == 1) {
          const int64_t arg = first_minimum(bound_row.data(), m);
          seeds.offer(bound_row[arg], arg);
        } else {
          for (int64_t j = 0; j < m; ++j)
            if (!seeds.full() || bound_row[j] <= seeds.worst()) seeds.offer(bound_row[j], j);
        }
        best.clear();
        for (const auto& item : seeds.items()) {
          best.offer(squared_distance(query, bank.row(item.second), d), item.second);
          bound_row[item.second] = std::numeric_limits<float>::infinity();
        }
        my_measured += k;
        // Rows whose bound does not exceed the k-th best distance could still enter. The
        // threshold only falls as rows enter, so one pass in row order finds them all.
        float threshold = next_float_up(best.worst());
        const float* zq = qproj.data() + i * p;
        for (int64_t j0 = 0; j0 < m; j0 += 8) {
          // Eight rows at a time ruled out together (a vectorised test); the threshold only
          // falls inside the group, so the test is conservative.
          const int64_t j1 = std::min(j0 + 8, m);
          int below = 0;
          for (int64_t j = j0; j < j1; ++j) below += bound_row[j] <= threshold;
          if (below == 0) continue;
          for (int64_t j = j0; j < j1; ++j) {
            if (!(bound_row[j] <= threshold)) continue;
            if (coarse) {
              ++my_passed;
              const float dr = qfull.resid[i] - pb.full.resid[j];
              const float full = projected_sq_distance(zq, pb.proj.data() + j * p, p) + dr * dr -
                                 (qsl + pb.slack[j]);
              if (!(full <= threshold)) continue;
            }
            best.offer(squared_distance(query, bank.row(j), d), j);
            threshold = next_float_up(best.worst());
            ++my_measured;
          }
        }
        const auto& items = best.items();
        for (int j = 0; j < k; ++j) {
          sq_dist[(q0 + i) * k + j] = static_cast<float>(items[j].first);
          index[(q0 + i) * k + j] = items[j].second;
        }
      }
    }
    total_measured += my_measured;
    total_passed += my_passed;
  }
  queries += n;
  measured += total_measured.load();
  if (coarse) {
    const int64_t seen = coarse_queries += n;
    const int64_t passed = coarse_passed += total_passed.load();
    const double break_even = static_cast<double>(m) * (p - pb.coarse.dims) / (kFullBoundCost * p);
    if (seen >= kCoarseSample && static_cast<double>(passed) > break_even * seen) {
      coarse_on = false;
    }
  }
}

// The bank is searched with faiss::knn_L2sqr, the function faiss::IndexFlatL2::search runs
// (exact, BLAS sgemm for batches of >= 20 queries). Calling it directly on the Tensor avoids
// IndexFlatL2's private copy of the bank (400 MB for 1e5 x 1024) and lets the norms be cached.
NearestNeighbors::NearestNeighbors(Tensor bank, int threads)
    : NearestNeighbors(std::move(bank), KnnOptions{threads}) {}

NearestNeighbors::NearestNeighbors(Tensor bank, const KnnOptions& options)
    : impl_(std::make_unique<Impl>()) {
  check_bank(bank);
  if (options.proj_dim < 0) throw_usage("nearest neighbours: proj_dim must be >= 0");
  if (options.coarse_dim < 0) throw_usage("nearest neighbours: coarse_dim must be >= 0");
  impl_->bank = std::move(bank);
  impl_->threads = options.threads;
  const Tensor& b = impl_->bank;
  if (options.proj_dim > 0 && b.dim(0) >= std::max<int64_t>(options.min_rows, options.proj_dim) &&
      b.dim(1) >= 4 * int64_t{options.proj_dim}) {
    impl_->bound = build_bound(b, options.proj_dim, options.coarse_dim, options.threads);
    if (impl_->bound) return;
  }
  if (options.bf16_screen && bf16_screen_pays()) {
    impl_->screen = std::make_unique<Bf16Screen>(impl_->bank);
    return;
  }
  impl_->norms.resize(static_cast<size_t>(b.dim(0)));
  OmpThreadsGuard guard(options.threads);
  faiss::fvec_norms_L2sqr(impl_->norms.data(), b.ptr(), static_cast<size_t>(b.dim(1)),
                          static_cast<size_t>(b.dim(0)));
}

NearestNeighbors::~NearestNeighbors() = default;
NearestNeighbors::NearestNeighbors(NearestNeighbors&&) noexcept = default;
NearestNeighbors& NearestNeighbors::operator=(NearestNeighbors&&) noexcept = default;

const Tensor& NearestNeighbors::bank() const { return impl_->bank; }
int64_t NearestNeighbors::size() const { return impl_->bank.dim(0); }
int64_t NearestNeighbors::dim() const { return impl_->bank.dim(1); }
bool NearestNeighbors::bounded() const { return impl_->bound.has_value(); }
const char* NearestNeighbors::method() const {
  return impl_->bound ? "bounded" : impl_->screen ? "bf16 screen" : "brute force";
}
bool NearestNeighbors::coarse_stage() const {
  return impl_->bound && impl_->bound->coarse.dims < impl_->bound->p && impl_->coarse_on.load();
}
void NearestNeighbors::set_threads(int threads) { impl_->threads = threads; }
double NearestNeighbors::exact_per_query() const {
  if (impl_->screen) return impl_->screen->exact_per_query();
  const int64_t q = impl_->queries.load();
  return q > 0 ? static_cast<double>(impl_->measured.load()) / static_cast<double>(q) : 0.0;
}

void NearestNeighbors::search(const float* queries, int64_t n, int k, float* sq_dist,
                              int64_t* index) const {
  const Tensor& bank = impl_->bank;
  check_k(bank, k);
  if (n < 0) throw_usage("nearest neighbours: negative number of queries");
  if (n == 0) return;
  PATCHCORE_ASSERT(queries != nullptr && sq_dist != nullptr && index != nullptr);
  if (impl_->bound) {
    // A single block runs in a team of one, where OpenBLAS would take its own thread count
    // from the caller's OpenMP setting: pin it to ours.
    OmpThreadsGuard guard(impl_->threads);
    impl_->search_bounded(queries, n, k, sq_dist, index);
    return;
  }
  if (impl_->screen) {
    OmpThreadsGuard guard(impl_->threads);
    impl_->screen->search(queries, n, k, omp_get_max_threads(), sq_dist, index);
    return;
  }
  const int64_t d = bank.dim(1);
  {
    OmpThreadsGuard guard(impl_->threads);
    faiss::knn_L2sqr(queries, bank.ptr(), static_cast<size_t>(d), static_cast<size_t>(n),
                     static_cast<size_t>(bank.dim(0)), static_cast<size_t>(k), sq_dist, index,
                     impl_->norms.data());
  }
  // The BLAS path computes ||q||^2 - 2 q.b + ||b||^2: its cancellation error is ~1e-7 of the
  // norms, which is large next to the small distances of normal patches (a query equal to a
  // bank row comes out as 1e-4 instead of 0) and differs between batch sizes. The neighbour
  // set stays FAISS's, but the distances are recomputed from the differences in double (as
  // knn_reference does) and re-sorted, so a duplicate scores exactly 0 and a query's distances
  // never depend on the rest of its batch. O(n k D): noise next to the O(n M D) search.
  const int threads = impl_->threads > 0 ? impl_->threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < n; ++i) {
    float* dist = sq_dist + i * k;
    int64_t* idx = index + i * k;
    std::vector<std::pair<float, int64_t>> row(static_cast<size_t>(k));
    int m = 0;
    for (int j = 0; j < k; ++j) {
      if (idx[j] < 0) continue;  // FAISS pads with -1 only when k > M, which check_k forbids
      row[m++] = {static_cast<float>(squared_distance(queries + i * d, bank.row(idx[j]), d)),
                  idx[j]};
    }
    std::sort(row.begin(), row.begin() + m);
    for (int j = 0; j < k; ++j) {
      dist[j] = j < m ? row[j].first : 0.0f;
      idx[j] = j < m ? row[j].second : -1;
    }
  }
}

void knn_reference(const Tensor& bank, const float* queries, int64_t n, int k, float* sq_dist,
                   int64_t* index) {
  check_bank(bank);
  check_k(bank, k);
  const int64_t m = bank.dim(0);
  const int64_t d = bank.dim(1);
  std::vector<std::pair<double, int64_t>> all(static_cast<size_t>(m));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) all[j] = {squared_distance(queries + i * d, bank.row(j), d), j};
    std::partial_sort(all.begin(), all.begin() + k, all.end());
    for (int j = 0; j < k; ++j) {
      sq_dist[i * k + j] = static_cast<float>(all[j].first);
      index[i * k + j] = all[j].second;
    }
  }
}

// Eight independent double accumulators (element j into lane j % 8), then a fixed pairwise
// sum: the same result on every call, and no single chain of d dependent additions (the pruned
// search measures dozens of rows per query with it).
double squared_distance(const float* a, const float* b, int64_t d) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8)
    for (int l = 0; l < 8; ++l) {
      const double t = static_cast<double>(a[j + l]) - static_cast<double>(b[j + l]);
      lane[l] += t * t;
    }
  for (int l = 0; j < d; ++j, ++l) {
    const double t = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    lane[l] += t * t;
  }
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

}  // namespace patchcore
