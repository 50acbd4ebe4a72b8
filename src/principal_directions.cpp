#include "principal_directions.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "blas.h"
#include "omp_threads.h"

namespace patchcore {

PrincipalDirections principal_directions(const float* rows, int64_t n, int64_t d, int p,
                                         int threads) {
  PrincipalDirections pd;
  if (p < 1 || p > d || n < 1) return pd;
  pd.mean.assign(static_cast<size_t>(d), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) pd.mean[j] += rows[i * d + j];
  for (double& v : pd.mean) v /= static_cast<double>(n);

  // 16,384 evenly spaced rows estimate the covariance well enough for a tight bound.
  const int64_t s = std::min<int64_t>(n, 16384);
  std::vector<float> sample(static_cast<size_t>(s * d));
  for (int64_t i = 0; i < s; ++i) {
    const float* row = rows + (i * n / s) * d;
    for (int64_t j = 0; j < d; ++j) sample[i * d + j] = static_cast<float>(row[j] - pd.mean[j]);
  }
  const int nd = static_cast<int>(d), k = static_cast<int>(s);
  std::vector<float> cov(static_cast<size_t>(d * d), 0.0f);
  {
    OmpThreadsGuard guard(threads);
    const float one = 1.0f, zero = 0.0f;
    ssyrk_("U", "N", &nd, &k, &one, sample.data(), &nd, &zero, cov.data(), &nd);
  }
  std::vector<double> a(cov.begin(), cov.end());
  const int il = nd - p + 1, iu = nd;
  const double vl = 0.0, vu = 0.0, abstol = 0.0;
  int found = 0, info = 0;
  std::vector<double> w(static_cast<size_t>(d)), z(static_cast<size_t>(d * p));
  std::vector<int> isuppz(static_cast<size_t>(2 * p));
  double work_size = 0.0;
  int iwork_size = 0;
  const int query = -1;
  dsyevr_("V", "I", "U", &nd, a.data(), &nd, &vl, &vu, &il, &iu, &abstol, &found, w.data(),
          z.data(), &nd, isuppz.data(), &work_size, &query, &iwork_size, &query, &info);
  if (info != 0) return {};
  const int lwork = static_cast<int>(work_size), liwork = iwork_size;
  std::vector<double> work(static_cast<size_t>(std::max(1, lwork)));
  std::vector<int> iwork(static_cast<size_t>(std::max(1, liwork)));
  dsyevr_("V", "I", "U", &nd, a.data(), &nd, &vl, &vu, &il, &iu, &abstol, &found, w.data(),
          z.data(), &nd, isuppz.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  if (info != 0 || found != p) return {};
  // LAPACK returns ascending eigenvalues: reverse the columns so that column 0 has the largest
  // variance (callers may use a leading subset).
  for (int c = 0; c < p / 2; ++c)
    std::swap_ranges(z.begin() + static_cast<int64_t>(c) * d,
                     z.begin() + static_cast<int64_t>(c + 1) * d,
                     z.begin() + static_cast<int64_t>(p - 1 - c) * d);

  for (int c = 0; c < p; ++c) {
    double* v = z.data() + static_cast<size_t>(c) * d;
    for (int prev = 0; prev < c; ++prev) {
      const double* u = z.data() + static_cast<size_t>(prev) * d;
      double dot = 0.0;
      for (int64_t j = 0; j < d; ++j) dot += u[j] * v[j];
      for (int64_t j = 0; j < d; ++j) v[j] -= dot * u[j];
    }
    double norm = 0.0;
    for (int64_t j = 0; j < d; ++j) norm += v[j] * v[j];
    norm = std::sqrt(norm);
    if (!(norm > 0.5)) return {};  // a direction collapsed: LAPACK's output is unusable
    for (int64_t j = 0; j < d; ++j) v[j] /= norm;
  }
  pd.basis.resize(static_cast<size_t>(d * p));
  for (int64_t j = 0; j < d; ++j)
    for (int c = 0; c < p; ++c) pd.basis[j * p + c] = z[static_cast<size_t>(c) * d + j];
  pd.p = p;
  return pd;
}

void project_centred(const PrincipalDirections& pd, const float* rows, int64_t n, int64_t d,
                     double* out, double* centred_sq) {
  if (n == 0) return;
  std::vector<double> xc(static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double v = double(rows[i * d + j]) - pd.mean[j];
      xc[i * d + j] = v;
      sq += v * v;
    }
    if (centred_sq) centred_sq[i] = sq;
  }
  // Column-major view: out^T [p, n] = basis^T [p, d] * xc^T [d, n].
  const int m = pd.p, nn = static_cast<int>(n), k = static_cast<int>(d);
  const double one = 1.0, zero = 0.0;
  dgemm_("N", "N", &m, &nn, &k, &one, pd.basis.data(), &m, xc.data(), &k, &zero, out, &m);
}

}  // namespace patchcore
