// Exact nearest neighbours of patch features in the memory bank (FAISS).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tensor.h"

namespace patchcore {

class NearestNeighbors {
 public:
  /// bank [M, D] (kept, not copied again). threads <= 0: all cores. Throws Error(usage) for a
  /// tensor that is not 2-D or has D == 0.
  explicit NearestNeighbors(Tensor bank, int threads = 0);
  ~NearestNeighbors();
  NearestNeighbors(NearestNeighbors&&) noexcept;
  NearestNeighbors& operator=(NearestNeighbors&&) noexcept;

  /// queries [n, D] row-major. Writes the k smallest squared L2 distances (ascending, equal
  /// distances by bank index) and the bank row indices, each [n, k] row-major. FAISS exact
  /// search (BLAS for batches of >= 20 queries) finds the neighbours; their distances are then
  /// recomputed from the differences in double, so a query equal to a bank row gets exactly 0
  /// and a query's distances do not depend on its batch. Runs on the constructor's thread
  /// count (set around the call only). Throws Error(usage) when k < 1 or k > size(): the
  /// answer is never padded or clamped.
  void search(const float* queries, int64_t n, int k, float* sq_dist, int64_t* index) const;
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

/// Squared L2 distance of two d-dimensional rows, accumulated in double.
double squared_distance(const float* a, const float* b, int64_t d);

}  // namespace patchcore
