#include "scoring.h"

#include <algorithm>
#include <cmath>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <string>

#include "error.h"
#include "resample.h"

namespace patchcore {
namespace {

// Nearest source index floor(dst * in / out), in exact integer arithmetic (torch computes it
// with a float scale, which can differ by one in rare cases where dst * in / out is an integer).
int nearest_index(int dst, int in, int out) {
  return static_cast<int>(std::min<int64_t>(int64_t{dst} * in / out, in - 1));
}

int kernel_radius(double sigma) { return static_cast<int>(std::floor(4.0 * sigma + 0.5)); }

void check_map_args(const std::vector<float>& patch, int h, int w, int size, const MapParams& p) {
  if (h < 1 || w < 1 || static_cast<int64_t>(patch.size()) != int64_t{h} * w)
    throw_usage("anomaly map: " + std::to_string(patch.size()) + " patch scores for a " +
                std::to_string(h) + " x " + std::to_string(w) + " grid");
  if (size < 1) throw_usage("anomaly map: size must be >= 1, got " + std::to_string(size));
  if (!(p.sigma >= 0) || !std::isfinite(p.sigma))
    throw_usage("anomaly map: blur sigma must be >= 0, got " + std::to_string(p.sigma));
}

// Index i folded back into [0, n) by the border rule, repeatedly for kernels wider than n.
int reflect_index(int i, int n, bool reflect101) {
  if (n == 1) return 0;
  while (i < 0 || i >= n) {
    if (reflect101)
      i = i < 0 ? -i : 2 * n - 2 - i;
    else
      i = i < 0 ? -i - 1 : 2 * n - 1 - i;
  }
  return i;
}

double l2(const float* a, const float* b, int64_t d) {
  return std::sqrt(squared_distance(a, b, d));
}

}  // namespace

ImageScores score_patches(const NearestNeighbors& nn, const float* patches, int64_t n_patches,
                          const ScoringParams& p) {
  if (n_patches < 1) throw_usage("scoring: no patches to score");
  if (p.k < 1 || p.k > nn.size())
    throw_usage("scoring: k = " + std::to_string(p.k) + " needs 1 <= k <= the memory bank size " +
                std::to_string(nn.size()));
  if (p.reweight && p.reweight_b < 1)
    throw_usage("scoring: reweight b must be >= 1, got " + std::to_string(p.reweight_b));

  const int k = p.k;
  std::vector<float> sq(n_patches * k);
  std::vector<int64_t> idx(n_patches * k);
  nn.search(patches, n_patches, k, sq.data(), idx.data());

  ImageScores r;
  r.patch.resize(n_patches);
  int64_t worst = 0;
  for (int64_t i = 0; i < n_patches; ++i) {
    double s = 0;
    for (int j = 0; j < k; ++j) {
      // FAISS computes |q|^2 + |m|^2 - 2 q.m, which can dip just below zero.
      const double d = std::max(0.0f, sq[i * k + j]);
      s += p.squared_l2 ? d : std::sqrt(d);
    }
    r.patch[i] = static_cast<float>(s / k);
    if (r.patch[i] > r.patch[worst]) worst = i;
  }
  r.score = r.patch[worst];
  if (!p.reweight) return r;

  // Eq. 7: the worst patch t*, its nearest bank row m*, and the b nearest bank rows of m*.
  const Tensor& bank = nn.bank();
  const int64_t D = nn.dim();
  const int64_t m_star = idx[worst * k];
  PATCHCORE_ASSERT(m_star >= 0 && m_star < nn.size());
  const int b = static_cast<int>(std::min<int64_t>(p.reweight_b, nn.size()));
  std::vector<float> nb_sq(b);
  std::vector<int64_t> nb(b);
  nn.search(bank.row(m_star), 1, b, nb_sq.data(), nb.data());
  // m* is its own nearest row, but exact duplicates (or rounding) can push it out of the list.
  if (std::find(nb.begin(), nb.end(), m_star) == nb.end()) nb.back() = m_star;

  const float* t_star = patches + worst * D;
  const double d_star = l2(t_star, bank.row(m_star), D);
  std::vector<double> d(b);
  for (int i = 0; i < b; ++i) {
    PATCHCORE_ASSERT(nb[i] >= 0 && nb[i] < nn.size());
    d[i] = l2(t_star, bank.row(nb[i]), D);
  }
  // Softmax weight of m*, shifted by the largest exponent so that large distances don't overflow.
  const double top = *std::max_element(d.begin(), d.end());
  double sum = 0;
  for (double di : d) sum += std::exp(di - top);
  const double weight = 1.0 - std::exp(d_star - top) / sum;
  r.score = weight * r.score;
  return r;
}

AnomalyMap anomaly_map(const std::vector<float>& patch, int h, int w, int size,
                       const MapParams& p) {
  check_map_args(patch, h, w, size, p);
  AnomalyMap m;
  m.height = size;
  m.width = size;
  m.values.resize(static_cast<size_t>(size) * size);
  float* out = m.values.data();

  if (p.upsample == Upsample::nearest) {
    std::vector<int> xs(size);
    for (int x = 0; x < size; ++x) xs[x] = nearest_index(x, w, size);
    for (int y = 0; y < size; ++y) {
      const float* src = patch.data() + static_cast<int64_t>(nearest_index(y, h, size)) * w;
      float* o = out + static_cast<int64_t>(y) * size;
      for (int x = 0; x < size; ++x) o[x] = src[xs[x]];
    }
  } else {
    const std::vector<Lerp> ly = lerp_table(h, size), lx = lerp_table(w, size);
    std::vector<float> tmp(static_cast<size_t>(h) * size);
    for (int y = 0; y < h; ++y) {
      const float* src = patch.data() + static_cast<int64_t>(y) * w;
      float* t = tmp.data() + static_cast<int64_t>(y) * size;
      for (int x = 0; x < size; ++x) t[x] = lx[x].w0 * src[lx[x].i0] + lx[x].w1 * src[lx[x].i1];
    }
    for (int y = 0; y < size; ++y) {
      const float* a = tmp.data() + static_cast<int64_t>(ly[y].i0) * size;
      const float* b = tmp.data() + static_cast<int64_t>(ly[y].i1) * size;
      float* o = out + static_cast<int64_t>(y) * size;
      for (int x = 0; x < size; ++x) o[x] = ly[y].w0 * a[x] + ly[y].w1 * b[x];
    }
  }

  if (p.sigma > 0) {
    const int ks = 2 * kernel_radius(p.sigma) + 1;
    cv::Mat img(size, size, CV_32F, out);
    cv::Mat blurred;
    cv::GaussianBlur(img, blurred, cv::Size(ks, ks), p.sigma, p.sigma,
                     p.reflect101 ? cv::BORDER_REFLECT_101 : cv::BORDER_REFLECT);
    blurred.copyTo(img);  // img wraps m.values, so this writes the result in place
  }
  return m;
}

AnomalyMap anomaly_map_reference(const std::vector<float>& patch, int h, int w, int size,
                                 const MapParams& p) {
  check_map_args(patch, h, w, size, p);
  // Upsampled map, each pixel straight from the interpolation formula.
  std::vector<double> up(static_cast<size_t>(size) * size);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      double v;
      if (p.upsample == Upsample::nearest) {
        const int sy = std::min(static_cast<int>(std::floor(double(y) * h / size)), h - 1);
        const int sx = std::min(static_cast<int>(std::floor(double(x) * w / size)), w - 1);
        v = patch[sy * w + sx];
      } else {
        const double fy = std::max(0.0, (y + 0.5) * h / size - 0.5);
        const double fx = std::max(0.0, (x + 0.5) * w / size - 0.5);
        const int y0 = std::min(static_cast<int>(fy), h - 1),
                  x0 = std::min(static_cast<int>(fx), w - 1);
        const int y1 = std::min(y0 + 1, h - 1), x1 = std::min(x0 + 1, w - 1);
        const double ay = y1 == y0 ? 0.0 : fy - y0, ax = x1 == x0 ? 0.0 : fx - x0;
        auto at = [&](int yy, int xx) { return static_cast<double>(patch[yy * w + xx]); };
        v = (1 - ay) * (1 - ax) * at(y0, x0) + (1 - ay) * ax * at(y0, x1) +
            ay * (1 - ax) * at(y1, x0) + ay * ax * at(y1, x1);
      }
      up[static_cast<size_t>(y) * size + x] = v;
    }

  AnomalyMap m;
  m.height = size;
  m.width = size;
  m.values.resize(up.size());
  if (p.sigma <= 0) {
    for (size_t i = 0; i < up.size(); ++i) m.values[i] = static_cast<float>(up[i]);
    return m;
  }
  const int r = kernel_radius(p.sigma);
  double norm = 0;
  for (int dy = -r; dy <= r; ++dy)
    for (int dx = -r; dx <= r; ++dx)
      norm += std::exp(-(dx * dx + dy * dy) / (2 * p.sigma * p.sigma));
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      double s = 0;
      for (int dy = -r; dy <= r; ++dy)
        for (int dx = -r; dx <= r; ++dx) {
          const int yy = reflect_index(y + dy, size, p.reflect101);
          const int xx = reflect_index(x + dx, size, p.reflect101);
          s += std::exp(-(dx * dx + dy * dy) / (2 * p.sigma * p.sigma)) *
               up[static_cast<size_t>(yy) * size + xx];
        }
      m.values[static_cast<size_t>(y) * size + x] = static_cast<float>(s / norm);
    }
  return m;
}

}  // namespace patchcore
