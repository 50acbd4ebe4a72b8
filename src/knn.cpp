#include "knn.h"

#include <faiss/utils/distances.h>
#include <omp.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <utility>

#include "error.h"

namespace patchcore {
namespace {

// FAISS and the OpenMP build of OpenBLAS both take their thread count from the calling thread's
// omp_get_max_threads(), so the count is set around the search only and restored afterwards
// (the library must not change the caller's OpenMP settings).
class OmpThreadsGuard {
 public:
  explicit OmpThreadsGuard(int threads) : saved_(omp_get_max_threads()) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  ~OmpThreadsGuard() { omp_set_num_threads(saved_); }
  OmpThreadsGuard(const OmpThreadsGuard&) = delete;
  OmpThreadsGuard& operator=(const OmpThreadsGuard&) = delete;

 private:
  int saved_;
};

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

}  // namespace

struct NearestNeighbors::Impl {
  Tensor bank;
  int threads = 0;
  std::vector<float> norms;  // ||b||^2 per bank row, computed once instead of per search
};

// The bank is searched with faiss::knn_L2sqr, the function faiss::IndexFlatL2::search runs
// (exact, BLAS sgemm for batches of >= 20 queries). Calling it directly on the Tensor avoids
// IndexFlatL2's private copy of the bank (400 MB for 1e5 x 1024) and lets the norms be cached.
NearestNeighbors::NearestNeighbors(Tensor bank, int threads) : impl_(std::make_unique<Impl>()) {
  check_bank(bank);
  impl_->bank = std::move(bank);
  impl_->threads = threads;
  const Tensor& b = impl_->bank;
  impl_->norms.resize(static_cast<size_t>(b.dim(0)));
  OmpThreadsGuard guard(threads);
  faiss::fvec_norms_L2sqr(impl_->norms.data(), b.ptr(), static_cast<size_t>(b.dim(1)),
                          static_cast<size_t>(b.dim(0)));
}

NearestNeighbors::~NearestNeighbors() = default;
NearestNeighbors::NearestNeighbors(NearestNeighbors&&) noexcept = default;
NearestNeighbors& NearestNeighbors::operator=(NearestNeighbors&&) noexcept = default;

const Tensor& NearestNeighbors::bank() const { return impl_->bank; }
int64_t NearestNeighbors::size() const { return impl_->bank.dim(0); }
int64_t NearestNeighbors::dim() const { return impl_->bank.dim(1); }

void NearestNeighbors::search(const float* queries, int64_t n, int k, float* sq_dist,
                              int64_t* index) const {
  const Tensor& bank = impl_->bank;
  check_k(bank, k);
  if (n < 0) throw_usage("nearest neighbours: negative number of queries");
  if (n == 0) return;
  PATCHCORE_ASSERT(queries != nullptr && sq_dist != nullptr && index != nullptr);
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

double squared_distance(const float* a, const float* b, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double t = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    s += t * t;
  }
  return s;
}

}  // namespace patchcore
