// Exact nearest neighbours screened by a bf16 matrix product: every query-row distance from one
// oneDNN matmul in bf16 (AMX or AVX-512 BF16 kernels, fp32 sums), known to within a proven
// error, and only the rows that could still be among the k nearest measured exactly.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "tensor.h"

namespace patchcore {

/// Whether this CPU runs the screen's bf16 kernels (oneDNN's AVX-512 BF16 or AMX).
bool bf16_screen_available();
/// Whether the screen is faster than FAISS's fp32 brute force here: with AMX. Without it
/// (oneDNN held to AVX-512 BF16) it measured slower (docs/benchmarks.md).
bool bf16_screen_pays();

class Bf16Screen {
 public:
  /// bank [M, D], read at construction (centred on its mean and rounded to bf16: 2 bytes per
  /// value beside the caller's float bank) and again by search(), which measures candidates
  /// exactly on it: the caller keeps it alive and unchanged. Error(usage) when the CPU lacks
  /// bf16 kernels or the bank is not 2-D.
  explicit Bf16Screen(const Tensor& bank);
  ~Bf16Screen();
  Bf16Screen(const Bf16Screen&) = delete;
  Bf16Screen& operator=(const Bf16Screen&) = delete;

  /// queries [n, D] row-major. Writes knn_reference()'s answer: the k smallest squared L2
  /// distances (from the differences in double, ascending, equal distances by row index) and
  /// their rows, [n, k] each. `threads` (>= 1) share the query blocks; 1 <= k <= M.
  ///
  /// Why it is exact: with q' = q - mean and b' = b - mean, |q - b|^2 = |q'|^2 + |b'|^2 - 2 q'.b'.
  /// The norms are exact (double); q'.b' comes from bf16 values (each within u = 2^-8 of its
  /// own magnitude) summed in fp32, so it is off by at most (2u + u^2 + gamma_2D (1 + u)^2)
  /// |q'| |b'| (Cauchy-Schwarz; gamma_n = n 2^-24 / (1 - n 2^-24) covers any summation order).
  /// Every row thus has an interval that holds its distance. The k smallest upper ends bound
  /// the k-th distance from above, so a row whose lower end is beyond that bound cannot be
  /// among the k nearest; every other row is measured exactly and the k best kept. Centring
  /// takes out what all rows share (CNN features are non-negative, with a large common part),
  /// which shrinks the norms and with them the intervals.
  void search(const float* queries, int64_t n, int k, int threads, float* sq_dist,
              int64_t* index) const;

  /// Rows measured exactly per query, averaged over every search so far (0 before any).
  double exact_per_query() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace patchcore
