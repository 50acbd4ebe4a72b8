// Exact nearest neighbours of patch features in the memory bank (FAISS).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tensor.h"

namespace patchcore {

class NearestNeighbors {
 public:
  /// bank [M, D]. threads <= 0: all cores.
  explicit NearestNeighbors(Tensor bank, int threads = 0);
  ~NearestNeighbors();
  NearestNeighbors(NearestNeighbors&&) noexcept;
  NearestNeighbors& operator=(NearestNeighbors&&) noexcept;

  /// queries [n, D] row-major. Writes the k smallest squared L2 distances (ascending) and the
  /// bank row indices, each [n, k] row-major.
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

}  // namespace patchcore
