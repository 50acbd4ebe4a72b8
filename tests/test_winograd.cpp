// Winograd F(2 x 2, 3 x 3) blocks against a plain convolution in double.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "winograd.h"

namespace patchcore {
namespace {

struct Case {
  int64_t cin, cout, h, w, pt, pl, pb, pr;
};

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// y[co, oy, ox] = bias[co] + sum w[co, ci, ky, kx] x[ci, oy - pt + ky, ox - pl + kx].
std::vector<double> plain_conv(const Case& c, const std::vector<float>& x,
                               const std::vector<float>& w, const std::vector<float>& bias) {
  const int64_t oh = c.h + c.pt + c.pb - 2, ow = c.w + c.pl + c.pr - 2;
  std::vector<double> y(static_cast<size_t>(c.cout * oh * ow));
  for (int64_t co = 0; co < c.cout; ++co)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        double s = bias.empty() ? 0.0 : bias[static_cast<size_t>(co)];
        for (int64_t ci = 0; ci < c.cin; ++ci)
          for (int64_t ky = 0; ky < 3; ++ky)
            for (int64_t kx = 0; kx < 3; ++kx) {
              const int64_t iy = oy - c.pt + ky, ix = ox - c.pl + kx;
              if (iy < 0 || iy >= c.h || ix < 0 || ix >= c.w) continue;
              s += double{w[static_cast<size_t>(((co * c.cin + ci) * 3 + ky) * 3 + kx)]} *
                   x[static_cast<size_t>((ci * c.h + iy) * c.w + ix)];
            }
        y[static_cast<size_t>((co * oh + oy) * ow + ox)] = s;
      }
  return y;
}

// Runs the tiles and channels as `tile_blocks` x `chan_blocks` blocks into a map filled with NaN
// and compares every output with the plain convolution. Returns the largest difference over the
// largest output before the clamp.
double run_case(const Case& c, int64_t tile_blocks, int64_t chan_blocks, bool with_bias, float lo,
                float hi, uint32_t seed) {
  const auto x = random_floats(static_cast<size_t>(c.cin * c.h * c.w), seed);
  const auto w = random_floats(static_cast<size_t>(c.cout * c.cin * 9), seed + 1);
  const auto bias =
      with_bias ? random_floats(static_cast<size_t>(c.cout), seed + 2) : std::vector<float>{};
  WinogradConv conv = make_winograd_conv(w.data(), c.cout, c.cin, c.pt, c.pl);
  conv.bias = bias;
  conv.lo = lo;
  conv.hi = hi;
  const int64_t oh = c.h + c.pt + c.pb - 2, ow = c.w + c.pl + c.pr - 2;
  const int64_t tiles = winograd_tiles(oh, ow);
  // a guard past the map: tiles over the edge must not write there
  std::vector<float> y(static_cast<size_t>(c.cout * oh * ow + 64), NAN);
  for (int64_t tb = 0; tb < tile_blocks; ++tb) {
    for (int64_t hb = 0; hb < chan_blocks; ++hb) {
      const int64_t t0 = tb * tiles / tile_blocks, t1 = (tb + 1) * tiles / tile_blocks;
      const int64_t c0 = hb * c.cout / chan_blocks, c1 = (hb + 1) * c.cout / chan_blocks;
      if (t0 == t1 || c0 == c1) continue;
      std::vector<float> scratch(static_cast<size_t>(winograd_scratch(conv, t1 - t0, c1 - c0)));
      winograd_block(conv, x.data(), c.h, c.w, y.data(), oh, ow, t0, t1, c0, c1, scratch.data());
    }
  }
  const auto want = plain_conv(c, x, w, bias);
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_FALSE(std::isnan(y[i])) << "output " << i << " not written";
    const double clamped = std::min(std::max(want[i], double{lo}), double{hi});
    max_diff = std::max(max_diff, std::abs(y[i] - clamped));
    max_abs = std::max(max_abs, std::abs(want[i]));
  }
  for (size_t i = want.size(); i < y.size(); ++i) EXPECT_TRUE(std::isnan(y[i])) << "guard " << i;
  return max_diff / std::max(max_abs, 1e-30);
}

constexpr float kInf = std::numeric_limits<float>::infinity();

// Same and valid padding, odd and even sizes (tiles over the right and bottom edges), outputs
// smaller than a tile, uneven pads.
TEST(Winograd, MatchesThePlainConvolution) {
  const Case cases[] = {
      {16, 24, 12, 12, 1, 1, 1, 1}, {16, 24, 13, 11, 1, 1, 1, 1}, {20, 17, 9, 10, 0, 0, 0, 0},
      {5, 3, 3, 3, 0, 0, 0, 0},     {7, 9, 1, 1, 1, 1, 1, 1},     {8, 8, 2, 5, 1, 1, 1, 1},
      {16, 16, 10, 9, 0, 1, 2, 0},  {33, 40, 35, 35, 1, 1, 1, 1},
  };
  uint32_t seed = 1;
  for (const Case& c : cases) {
    const double err = run_case(c, 1, 1, true, -kInf, kInf, seed += 3);
    EXPECT_LT(err, 2e-6) << c.cin << "->" << c.cout << " " << c.h << "x" << c.w << " pads " << c.pt
                         << c.pl << c.pb << c.pr;
  }
}

// Blocks of tiles that start and end inside tile rows, and of output channels, fill the map
// exactly once; bias and the clamp (ReLU, ReLU6) are applied on the way out.
TEST(Winograd, BlocksOfTilesAndChannelsWithBiasAndClamp) {
  const Case c{24, 40, 23, 30, 1, 1, 1, 1};  // 12 x 15 tiles
  for (auto [tb, cb] : {std::pair<int64_t, int64_t>{7, 1}, {1, 3}, {5, 4}, {180, 1}}) {
    EXPECT_LT(run_case(c, tb, cb, true, 0.0f, kInf, 11), 2e-6) << tb << " x " << cb;
    EXPECT_LT(run_case(c, tb, cb, true, 0.0f, 6.0f, 12), 2e-6) << tb << " x " << cb;
    EXPECT_LT(run_case(c, tb, cb, false, -kInf, kInf, 13), 2e-6) << tb << " x " << cb;
  }
}

}  // namespace
}  // namespace patchcore
