#include "bf16_screen.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <oneapi/dnnl/dnnl.hpp>
#include <utility>
#include <vector>

#include "dnnl_cpu.h"
#include "error.h"
#include "knn.h"

namespace patchcore {
namespace {

using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

// Round to nearest even, as oneDNN's own reorders do; the bound below assumes it. NaN stays NaN.
uint16_t to_bf16(float f) {
  uint32_t bits = 0;
  std::memcpy(&bits, &f, sizeof bits);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// Relative error of one value: bf16's unit roundoff 2^-8, plus the float rounding of the
// centred double before it.
constexpr double kUnit = 0x1p-8 + 0x1p-22;

// |computed q'.b' - exact q'.b'| <= coefficient * |q'| |b'|: the product of two rounded values
// is off by at most 2u + u^2 of the exact one, and an fp32 sum of 2D terms in any order (AMX
// adds pairs before accumulating) by gamma_2D of the sum of magnitudes.
double product_error_coefficient(int64_t d) {
  const double eta = 2 * kUnit + kUnit * kUnit;
  const double n_u = 2.0 * static_cast<double>(d) * 0x1p-24;
  const double gamma = n_u / (1 - n_u);
  return eta + gamma * (1 + kUnit) * (1 + kUnit);
}

// Where the queries go in blocks of `block` rows: the block's products [block, M] in fp32 stay
// near 4 MB, as the bounded search's do.
int64_t block_rows(int64_t m) { return std::clamp<int64_t>((int64_t{1} << 20) / m, 16, 256); }

// A query's intervals, row j: centre q2 + b2[j] - 2 products[j], half-width
// spread * nrm[j] + rel * (q2 + b2[j]) + tiny. Evaluated in float: the few roundings of these
// sums (about 1e-6 of q2 + b2[j]) are covered by rel, which is ten times larger.
struct Intervals {
  float q2, spread, rel, tiny;
  const float* b2;
  const float* nrm;
  const float* products;
};

// The smallest upper end over rows [0, m) (k = 1), or every upper end into `out` (k > 1).
// Non-finite ends (a bank row with NaN or infinity) are left out.
#if defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#else
__attribute__((noinline, target_clones("avx512f", "avx2", "default")))
#endif
float upper_ends(const Intervals& v, int64_t m, float* out) {
  float best = std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < m; ++j) {
    const float sum = v.q2 + v.b2[j];
    const float up = (sum - 2 * v.products[j]) + (v.spread * v.nrm[j] + v.rel * sum + v.tiny);
    if (out != nullptr) out[j] = up;
    best = up < best ? up : best;  // NaN never wins
  }
  return best;
}

// Rows [0, m) whose lower end does not exceed `limit`, appended to `rows`.
#if defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#else
__attribute__((noinline, target_clones("avx512f", "avx2", "default")))
#endif
void rows_within(const Intervals& v, int64_t m, float limit, std::vector<int64_t>& rows) {
  for (int64_t j = 0; j < m; ++j) {
    const float sum = v.q2 + v.b2[j];
    const float lo = (sum - 2 * v.products[j]) - (v.spread * v.nrm[j] + v.rel * sum + v.tiny);
    if (!(lo > limit)) rows.push_back(j);
  }
}

}  // namespace

bool bf16_screen_available() { return dnnl_has_bf16(); }

bool bf16_screen_pays() { return dnnl_has_amx(); }

struct Bf16Screen::Impl {
  const float* bank = nullptr;
  int64_t m = 0, d = 0, block = 0;
  std::vector<double> mean;    // [D]
  std::vector<float> sq_norm;  // |b'|^2 per row (summed in double)
  std::vector<float> norm;     // |b'|
  double coefficient = 0;      // interval half-width per |q'| |b'|, slack included
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul matmul;
  memory weights;  // the centred bank in bf16, in the layout the matmul asked for
  mutable std::atomic<int64_t> queries{0}, measured{0};

  // One searching thread's buffers, reused from block to block and query to query.
  struct Workspace {
    explicit Workspace(const Impl& s);
    dnnl::stream stream;
    std::vector<uint16_t> src;  // [block, D] bf16 queries
    std::vector<float> dst;     // [block, M] products
    std::vector<double> q_sq;   // |q'|^2 per query of the block
    memory src_mem, dst_mem, scratchpad;
    std::vector<float> ends;                             // upper ends (k > 1)
    std::vector<int64_t> rows;                           // rows not ruled out
    std::vector<std::pair<double, int64_t>> candidates;  // their exact distances
  };

  void centre_bank();
  void build_matmul();
  void search_block(const float* q, int64_t rows, int k, Workspace& w, float* sq_dist,
                    int64_t* index) const;
  int64_t select(const float* q, double q_sq, const float* products, int k, Workspace& w,
                 float* sq_dist, int64_t* index) const;
};

Bf16Screen::Impl::Workspace::Workspace(const Impl& s)
    : stream(s.engine),
      src(static_cast<size_t>(s.block * s.d)),
      dst(static_cast<size_t>(s.block * s.m)),
      q_sq(static_cast<size_t>(s.block)),
      src_mem(s.pd.src_desc(), s.engine, src.data()),
      dst_mem(s.pd.dst_desc(), s.engine, dst.data()),
      scratchpad(s.pd.scratchpad_desc(), s.engine) {}

void Bf16Screen::Impl::centre_bank() {
  mean.assign(static_cast<size_t>(d), 0.0);
  for (int64_t j = 0; j < m; ++j)
    for (int64_t i = 0; i < d; ++i) mean[i] += bank[j * d + i];
  for (double& v : mean) v /= static_cast<double>(m);
  sq_norm.resize(static_cast<size_t>(m));
  norm.resize(static_cast<size_t>(m));
  for (int64_t j = 0; j < m; ++j) {
    double s = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double t = bank[j * d + i] - mean[i];
      s += t * t;
    }
    sq_norm[j] = static_cast<float>(s);
    norm[j] = static_cast<float>(std::sqrt(s));
  }
}

void Bf16Screen::Impl::build_matmul() {
  dnnl::primitive_attr attr;
  // A scratchpad per call: the primitive is shared by every thread that searches at once.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const memory::desc src_md({block, d}, dt::bf16, tag::ab);
  const memory::desc any_weights({d, m}, dt::bf16, tag::any);
  const memory::desc dst_md({block, m}, dt::f32, tag::ab);
  pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, any_weights, dst_md), attr, engine);
  matmul = dnnl::matmul(pd);

  // The bank as weights [D, M]: row j of the centred bank is column j ("ba").
  std::vector<uint16_t> centred(static_cast<size_t>(m * d));
  for (int64_t j = 0; j < m; ++j)
    for (int64_t i = 0; i < d; ++i)
      centred[j * d + i] = to_bf16(static_cast<float>(bank[j * d + i] - mean[i]));
  memory plain(memory::desc({d, m}, dt::bf16, tag::ba), engine, centred.data());
  weights = memory(pd.weights_desc(), engine);
  dnnl::stream stream(engine);
  dnnl::reorder(plain, weights).execute(stream, plain, weights);
  stream.wait();
}

Bf16Screen::Bf16Screen(const Tensor& bank) : impl_(std::make_unique<Impl>()) {
  if (!bf16_screen_available())
    throw_usage("bf16 screen: oneDNN has no bf16 kernels on this CPU (" + dnnl_isa_name() + ")");
  if (bank.shape.size() != 2 || bank.dim(0) < 1 || bank.dim(1) < 1)
    throw_usage("bf16 screen: the memory bank must be a non-empty 2-D [rows, dim] tensor");
  Impl& s = *impl_;
  s.bank = bank.ptr();
  s.m = bank.dim(0);
  s.d = bank.dim(1);
  s.block = block_rows(s.m);
  // 1.25: slack over the proven bound, for the double sums around it.
  s.coefficient = 2 * 1.25 * product_error_coefficient(s.d);
  s.centre_bank();
  s.build_matmul();
}

Bf16Screen::~Bf16Screen() = default;

double Bf16Screen::exact_per_query() const {
  const int64_t q = impl_->queries.load();
  return q > 0 ? static_cast<double>(impl_->measured.load()) / static_cast<double>(q) : 0.0;
}

// One query's k nearest from its row of products: every row's interval, the k-th smallest upper
// end, then the exact distance of every row whose lower end does not exceed it. Returns the
// rows measured.
int64_t Bf16Screen::Impl::select(const float* q, double q_sq, const float* products, int k,
                                 Workspace& w, float* sq_dist, int64_t* index) const {
  const float q_norm = static_cast<float>(std::sqrt(q_sq));
  const Intervals v{static_cast<float>(q_sq),
                    static_cast<float>(coefficient) * q_norm,
                    1e-5f,
                    4.0f * static_cast<float>(d) * FLT_MIN * (1 + q_norm),
                    sq_norm.data(),
                    norm.data(),
                    products};
  float limit = std::numeric_limits<float>::infinity();
  if (k == 1) {
    limit = upper_ends(v, m, nullptr);
  } else {
    w.ends.resize(static_cast<size_t>(m));
    upper_ends(v, m, w.ends.data());
    const auto finite_end =
        std::remove_if(w.ends.begin(), w.ends.end(), [](float e) { return !std::isfinite(e); });
    if (finite_end - w.ends.begin() >= k) {
      std::nth_element(w.ends.begin(), w.ends.begin() + (k - 1), finite_end);
      limit = w.ends[static_cast<size_t>(k - 1)];
    }
  }
  w.rows.clear();
  rows_within(v, m, limit, w.rows);
  w.candidates.clear();
  for (const int64_t j : w.rows) w.candidates.emplace_back(squared_distance(q, bank + j * d, d), j);
  PATCHCORE_ASSERT(static_cast<int64_t>(w.candidates.size()) >= k);
  std::partial_sort(w.candidates.begin(), w.candidates.begin() + k, w.candidates.end());
  for (int j = 0; j < k; ++j) {
    sq_dist[j] = static_cast<float>(w.candidates[static_cast<size_t>(j)].first);
    index[j] = w.candidates[static_cast<size_t>(j)].second;
  }
  return static_cast<int64_t>(w.rows.size());
}

void Bf16Screen::Impl::search_block(const float* q, int64_t rows, int k, Workspace& w,
                                    float* sq_dist, int64_t* index) const {
  for (int64_t r = 0; r < block; ++r) {
    uint16_t* out = w.src.data() + r * d;
    if (r >= rows) {
      std::fill(out, out + d, uint16_t{0});
      continue;
    }
    double s = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double t = q[r * d + i] - mean[i];
      s += t * t;
      out[i] = to_bf16(static_cast<float>(t));
    }
    w.q_sq[r] = s;
  }
  matmul.execute(w.stream, {{DNNL_ARG_SRC, w.src_mem},
                            {DNNL_ARG_WEIGHTS, weights},
                            {DNNL_ARG_DST, w.dst_mem},
                            {DNNL_ARG_SCRATCHPAD, w.scratchpad}});
  w.stream.wait();
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r)
    count +=
        select(q + r * d, w.q_sq[r], w.dst.data() + r * m, k, w, sq_dist + r * k, index + r * k);
  measured += count;
  queries += rows;
}

void Bf16Screen::search(const float* queries, int64_t n, int k, int threads, float* sq_dist,
                        int64_t* index) const {
  const Impl& s = *impl_;
  if (k < 1 || k > s.m) throw_usage("bf16 screen: k must be in [1, bank rows]");
  if (n <= 0) return;
  PATCHCORE_ASSERT(threads >= 1 && queries != nullptr && sq_dist != nullptr && index != nullptr);
  const int64_t blocks = (n + s.block - 1) / s.block;
  const int team = static_cast<int>(std::min<int64_t>(threads, blocks));
  // Each thread runs its blocks' matmuls alone: oneDNN inside an active parallel region runs on
  // the calling thread (with a team of one, on the caller's OpenMP count).
#pragma omp parallel num_threads(team)
  {
    Impl::Workspace w(s);
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * s.block;
      s.search_block(queries + r0 * s.d, std::min(s.block, n - r0), k, w, sq_dist + r0 * k,
                     index + r0 * k);
    }
  }
}

}  // namespace patchcore
