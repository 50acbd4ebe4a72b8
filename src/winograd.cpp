#include "winograd.h"

#include <algorithm>
#include <cstring>

#include "blas.h"
#include "error.h"

namespace patchcore {

WinogradConv make_winograd_conv(const float* weights, int64_t cout, int64_t cin, int64_t pad_top,
                                int64_t pad_left) {
  PATCHCORE_ASSERT(cout > 0 && cin > 0 && pad_top >= 0 && pad_left >= 0);
  WinogradConv conv;
  conv.cout = cout;
  conv.cin = cin;
  conv.pad_top = pad_top;
  conv.pad_left = pad_left;
  conv.u.resize(static_cast<size_t>(kWinogradPoints * cout * cin));
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  for (int64_t co = 0; co < cout; ++co) {
    for (int64_t ci = 0; ci < cin; ++ci) {
      const float* g = weights + (co * cin + ci) * 9;
      double gg[4][3];  // G g
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 3; ++j)
          gg[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const double v = gg[i][0] * G[j][0] + gg[i][1] * G[j][1] + gg[i][2] * G[j][2];
          conv.u[static_cast<size_t>(((i * 4 + j) * cout + co) * cin + ci)] = static_cast<float>(v);
        }
    }
  }
  return conv;
}

namespace {

// Calls fn(ty, tx0, tx1, k0): the tiles [t0, t1) as runs along tile rows, k0 being the run's
// first tile's position in the block.
template <class F>
void for_tile_rows(int64_t tiles_w, int64_t t0, int64_t t1, F&& fn) {
  for (int64_t t = t0; t < t1;) {
    const int64_t ty = t / tiles_w, tx0 = t % tiles_w;
    const int64_t tx1 = std::min(tiles_w, tx0 + (t1 - t));
    fn(ty, tx0, tx1, t - t0);
    t += tx1 - tx0;
  }
}

// V = B^T d B for every input channel and tile of the block: v[p * step + ci * nb + k] for the
// point p = 4 i + j. B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
void transform_input(const WinogradConv& conv, const float* x, int64_t h, int64_t w,
                     int64_t tiles_w, int64_t t0, int64_t t1, int64_t step, float* v) {
  const int64_t nb = t1 - t0;
  // Four input rows of one run of tiles, zero outside the image, then their B^T combinations.
  std::vector<float> rows(static_cast<size_t>(8 * (2 * tiles_w + 2)));
  for (int64_t ci = 0; ci < conv.cin; ++ci) {
    const float* xc = x + ci * h * w;
    for_tile_rows(tiles_w, t0, t1, [&](int64_t ty, int64_t tx0, int64_t tx1, int64_t k0) {
      const int64_t len = 2 * (tx1 - tx0) + 2;  // input columns ix0 .. ix0 + len
      const int64_t ix0 = 2 * tx0 - conv.pad_left;
      const int64_t a = std::clamp<int64_t>(-ix0, 0, len), b = std::clamp<int64_t>(w - ix0, a, len);
      float* d[4];
      for (int r = 0; r < 4; ++r) {
        d[r] = rows.data() + r * len;
        const int64_t iy = 2 * ty - conv.pad_top + r;
        if (iy < 0 || iy >= h) {
          std::fill(d[r], d[r] + len, 0.0f);
          continue;
        }
        std::fill(d[r], d[r] + a, 0.0f);
        std::memcpy(d[r] + a, xc + iy * w + ix0 + a, static_cast<size_t>(b - a) * sizeof(float));
        std::fill(d[r] + b, d[r] + len, 0.0f);
      }
      float* s[4];
      for (int r = 0; r < 4; ++r) s[r] = rows.data() + (4 + r) * len;
      for (int64_t c = 0; c < len; ++c) {
        s[0][c] = d[0][c] - d[2][c];
        s[1][c] = d[1][c] + d[2][c];
        s[2][c] = d[2][c] - d[1][c];
        s[3][c] = d[1][c] - d[3][c];
      }
      for (int i = 0; i < 4; ++i) {
        float* out = v + 4 * i * step + ci * nb + k0;
        const float* si = s[i];
        for (int64_t k = 0; k < tx1 - tx0; ++k) {
          const float* q = si + 2 * k;
          out[k] = q[0] - q[2];
          out[step + k] = q[1] + q[2];
          out[2 * step + k] = q[2] - q[1];
          out[3 * step + k] = q[1] - q[3];
        }
      }
    });
  }
}

// Y = A^T M A plus bias, clamped, for channels [c0, c1): A^T = [1 1 1 0; 0 1 -1 -1]. Point p of
// channel c and tile k is m[p * step + (c - c0) * nb + k]. Each run of tiles is done point row by
// point row over contiguous tiles so that the loops vectorise, into two output rows of `rows`.
void transform_output(const WinogradConv& conv, const float* m, int64_t nb, int64_t step,
                      int64_t tiles_w, int64_t t0, int64_t t1, int64_t c0, int64_t c1, float* y,
                      int64_t oh, int64_t ow) {
  std::vector<float> rows(static_cast<size_t>(12 * tiles_w));
  for (int64_t c = c0; c < c1; ++c) {
    const float bias = conv.bias.empty() ? 0.0f : conv.bias[static_cast<size_t>(c)];
    const float* mc = m + (c - c0) * nb;
    float* yc = y + c * oh * ow;
    for_tile_rows(tiles_w, t0, t1, [&](int64_t ty, int64_t tx0, int64_t tx1, int64_t k0) {
      const int64_t n = tx1 - tx0;
      float* a0 = rows.data();  // A^T M: a0[j * n + k], a1[j * n + k]
      float* a1 = a0 + 4 * n;
      for (int j = 0; j < 4; ++j) {
        const float* p0 = mc + j * step + k0;
        const float* p1 = p0 + 4 * step;
        const float* p2 = p0 + 8 * step;
        const float* p3 = p0 + 12 * step;
        float* r0 = a0 + j * n;
        float* r1 = a1 + j * n;
        for (int64_t k = 0; k < n; ++k) {
          r0[k] = p0[k] + p1[k] + p2[k];
          r1[k] = p1[k] - p2[k] - p3[k];
        }
      }
      float* out = a1 + 4 * n;  // two output rows of 2 n
      for (int r = 0; r < 2; ++r) {
        const float* q = r == 0 ? a0 : a1;
        float* o = out + r * 2 * n;
        for (int64_t k = 0; k < n; ++k) {
          o[2 * k] = q[k] + q[n + k] + q[2 * n + k];
          o[2 * k + 1] = q[n + k] - q[2 * n + k] - q[3 * n + k];
        }
      }
      const int64_t ox = 2 * tx0, len = std::min(2 * n, ow - ox);
      for (int64_t r = 0; r < 2 && 2 * ty + r < oh; ++r) {
        const float* o = out + r * 2 * n;
        float* dst = yc + (2 * ty + r) * ow + ox;
        for (int64_t k = 0; k < len; ++k) {
          dst[k] = std::min(std::max(o[k] + bias, conv.lo), conv.hi);
        }
      }
    });
  }
}

}  // namespace

void winograd_block(const WinogradConv& conv, const float* x, int64_t h, int64_t w, float* y,
                    int64_t oh, int64_t ow, int64_t t0, int64_t t1, int64_t c0, int64_t c1,
                    float* scratch) {
  const int64_t tiles_w = (ow + 1) / 2;
  PATCHCORE_ASSERT(0 <= t0 && t0 < t1 && t1 <= winograd_tiles(oh, ow));
  PATCHCORE_ASSERT(0 <= c0 && c0 < c1 && c1 <= conv.cout);
  const int64_t nb = t1 - t0, cb = c1 - c0;
  PATCHCORE_ASSERT(kWinogradPoints * std::max(conv.cin, cb) * nb < std::numeric_limits<int>::max());
  const int64_t v_step = conv.cin * nb + kWinogradPointPad, m_step = cb * nb + kWinogradPointPad;
  float* v = scratch;
  float* m = scratch + kWinogradPoints * v_step;
  transform_input(conv, x, h, w, tiles_w, t0, t1, v_step, v);
  // Row-major M_p [cb x nb] = U_p [cb x cin] V_p [cin x nb] is column-major M_p^T = V_p^T U_p^T.
  const int m_ = static_cast<int>(nb), n_ = static_cast<int>(cb), k_ = static_cast<int>(conv.cin);
  const float one = 1.0f, zero = 0.0f;
  for (int p = 0; p < kWinogradPoints; ++p) {
    sgemm_("N", "N", &m_, &n_, &k_, &one, v + p * v_step, &m_,
           conv.u.data() + (p * conv.cout + c0) * conv.cin, &k_, &zero, m + p * m_step, &m_);
  }
  transform_output(conv, m, nb, m_step, tiles_w, t0, t1, c0, c1, y, oh, ow);
}

}  // namespace patchcore
