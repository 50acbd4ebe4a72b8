// The top principal directions of a set of rows: the subspace behind the exact lower bounds of
// the nearest-neighbour search and the coreset.
#pragma once

#include <cstdint>
#include <vector>

namespace patchcore {

struct PrincipalDirections {
  std::vector<double> mean;   ///< [d]
  std::vector<double> basis;  ///< [d, p] row-major, columns by decreasing variance, orthonormal
                              ///< to double rounding
  int p = 0;                  ///< 0: none found
};

/// The p directions of largest variance of rows [n, d] (row-major floats), estimated from at
/// most 16,384 evenly spaced rows (covariance by BLAS ssyrk, eigenvectors by LAPACK dsyevr),
/// then re-orthonormalised in double by modified Gram-Schmidt so that callers may rely on
/// |P^T v| <= |v| whatever LAPACK's accuracy. Any orthonormal basis keeps such bounds valid;
/// the principal one makes them tight. Returns p = 0 when p < 1, p > d, n < 1 or LAPACK
/// fails. threads <= 0: all cores (BLAS runs on the calling thread's OpenMP count).
PrincipalDirections principal_directions(const float* rows, int64_t n, int64_t d, int p,
                                         int threads = 0);

/// rows [n, d] minus the mean, times the basis, in double: [n, p] row-major, plus each row's
/// centred squared norm |x - mean|^2 in `centred_sq` (n values) when not null. Single-threaded
/// (callers split the rows).
void project_centred(const PrincipalDirections& pd, const float* rows, int64_t n, int64_t d,
                     double* out, double* centred_sq);

}  // namespace patchcore
