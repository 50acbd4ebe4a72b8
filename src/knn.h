// Exact nearest neighbours of patch features in the memory bank: FAISS brute force, or a
// projection bound that skips most of the bank and returns the same answer.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tensor.h"

namespace patchcore {

struct KnnOptions {
  int threads = 0;  ///< <= 0: the calling thread's OpenMP count at each search
  /// Dimension of the bound's subspace (the bank's top principal directions); 0: brute force
  /// only. The bound is used when D >= 4 proj_dim and the bank has >= min_rows rows. 128
  /// measured best on inception_v3 features (1,056 columns): 64 measured 4x more rows exactly,
  /// 256 doubled the cross term for little.
  int proj_dim = 128;
  int64_t min_rows = 2048;
  /// When 0 < coarse_dim < proj_dim, the bound of every row is first taken on the leading
  /// coarse_dim directions only (a cross term of K = coarse_dim, the search's largest cost at
  /// K = 128), and the full bound is computed only for the rows that bound does not rule out;
  /// searches stop doing so once too many rows get through (see coarse_stage()). On the
  /// magnetic_tile bank (9,726 x 1,056), 100 images' searches took 7.0-7.2 s (summed over
  /// threads) on 32 leading directions, 7.0-7.6 on 64, 7.4-8.6 on 16 and 9.6-10.9 without.
  int coarse_dim = 32;
  /// Where the bf16 screen pays (bf16_screen_pays(): AMX), banks the bound does not take are
  /// searched by Bf16Screen instead of FAISS's fp32 brute force: the same work in a bf16
  /// matrix product, then the few rows it cannot rule out measured exactly. Its answer is
  /// knn_reference()'s, so this changes the time only; false: FAISS (tests, comparisons).
  /// On banks the bound takes the screen measured slower, so the bound keeps them
  /// (docs/benchmarks.md).
  bool bf16_screen = true;
};

class NearestNeighbors {
 public:
  /// bank [M, D] (kept, not copied again). threads <= 0: the calling thread's OpenMP count
  /// (search() is then safe from several threads at once). Throws Error(usage) for a
  /// tensor that is not 2-D or has D == 0.
  explicit NearestNeighbors(Tensor bank, int threads = 0);
  NearestNeighbors(Tensor bank, const KnnOptions& options);
  ~NearestNeighbors();
  NearestNeighbors(NearestNeighbors&&) noexcept;
  NearestNeighbors& operator=(NearestNeighbors&&) noexcept;

  /// queries [n, D] row-major. Writes the k smallest squared L2 distances (ascending, equal
  /// distances by bank index) and the bank row indices, each [n, k] row-major. Distances are
  /// computed from the differences in double, so a query equal to a bank row gets exactly 0
  /// and a query's distances do not depend on its batch. Runs on the constructor's thread
  /// count (set around the call only). Throws Error(usage) when k < 1 or k > size(): the
  /// answer is never padded or clamped.
  ///
  /// With the bound (bounded() true) the answer is knn_reference()'s exactly: every bank row
  /// gets a lower bound of its distance from the bank's top principal directions
  /// (|P(q - b)|^2 + (|residual q| - |residual b|)^2, the cross term by one small sgemm, on
  /// coarse_dim directions then on proj_dim for the rows left), and only rows whose bound does
  /// not exceed the k-th best exact distance so far are measured exactly. On CNN patch
  /// features about a dozen of 10,000 rows are measured per query.
  /// Without it, FAISS's brute force (BLAS for batches of >= 20 queries) chooses the
  /// neighbours, and rows closer than its rounding (~1e-7 of the norms) may come in either
  /// order.
  void search(const float* queries, int64_t n, int k, float* sq_dist, int64_t* index) const;
  /// Changes the thread count of later searches (<= 0: all cores) without rebuilding the bound
  /// (its principal directions cost about a third of a second for a 10,000 x 1,056 bank).
  void set_threads(int threads);
  /// Whether search() uses the projection bound (see KnnOptions).
  bool bounded() const;
  /// "bounded", "bf16 screen" or "brute force": how search() runs (see KnnOptions).
  const char* method() const;
  /// Whether later searches take the coarse bound first (KnnOptions::coarse_dim). It starts on
  /// and goes off for good once, over at least 1,000 queries, more rows per query pass it than
  /// the time its smaller cross term saves would pay for in full bounds (M (p - coarse) /
  /// (40 p), from measured costs). It never changes an answer, only the time.
  bool coarse_stage() const;
  /// Bank rows measured exactly per query, averaged over every bounded or screened search so
  /// far (0 before any, and for FAISS's brute force); for benchmarks.
  double exact_per_query() const;
  const Tensor& bank() const;
  int64_t size() const;
  int64_t dim() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Brute force in double precision: the yardstick for NearestNeighbors in tests.
void knn_reference(const Tensor& bank, const float* queries, int64_t n, int k, float* sq_dist,
                   int64_t* index);

/// Squared L2 distance of two d-dimensional rows, accumulated in double in a fixed order (eight
/// lanes, then a fixed tree): relative error below (d / 8 + 3) 2^-53.
double squared_distance(const float* a, const float* b, int64_t d);

}  // namespace patchcore
