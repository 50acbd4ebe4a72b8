// 3 x 3 convolutions of stride 1 by Winograd's F(2 x 2, 3 x 3): each 2 x 2 block of outputs
// from a 4 x 4 block of inputs with 16 multiplications per input channel instead of 36
// (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
//
// Written by hand because none of our packages has it for NCHW float maps on a CPU (OpenCV 4.6
// DNN's Winograd is for its own layers only, FAISS and OpenBLAS have no convolutions). The 16
// products per tile become 16 GEMMs [cout x cin] x [cin x tiles], one single-threaded BLAS sgemm
// each, so the caller shares blocks of tiles and channels out to its threads.
//
// F(2 x 2, 3 x 3) rather than the larger tiles: its transforms only add, subtract and halve,
// so its results stay within a few float roundings of a direct convolution's (the engines'
// bar is 1e-5 of a layer's largest value). F(4 x 4, 3 x 3), tried, scales by up to 8 and 1/24:
// InceptionV3's features moved 1.7e-6 from OpenCV's instead of 1.0e-6, and it was no faster
// there (faster at 147 x 147, slower at 35 x 35; docs/benchmarks.md).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace patchcore {

/// Number of transformed values per tile (4 x 4).
inline constexpr int kWinogradPoints = 16;

/// A convolution's weights transformed once for all images, and what a block needs to know.
struct WinogradConv {
  int64_t cout = 0, cin = 0;
  int64_t pad_top = 0, pad_left = 0;  ///< zeros before the input (after: from the output size)
  std::vector<float> u;               ///< [16, cout, cin]: U = G g G^T per channel pair
  std::vector<float> bias;            ///< [cout] or empty
  /// Applied after the bias: min(max(v, lo), hi). -inf / inf is none, 0 / inf is ReLU.
  float lo = -std::numeric_limits<float>::infinity();
  float hi = std::numeric_limits<float>::infinity();
};

/// weights [cout, cin, 3, 3] (ONNX order). The transform is computed in double.
WinogradConv make_winograd_conv(const float* weights, int64_t cout, int64_t cin, int64_t pad_top,
                                int64_t pad_left);

/// Tiles of an output map: ceil(oh / 2) x ceil(ow / 2), numbered row by row.
inline int64_t winograd_tiles(int64_t oh, int64_t ow) { return ((oh + 1) / 2) * ((ow + 1) / 2); }

/// Floats between the scratch's transformed points beyond their own: 16 streams a multiple of
/// 4 KB apart would share the same L1 sets (with this and its loops rewritten to vectorise, the
/// output transform at 147 x 147 went from 12.7 to 5-6 ms on one thread).
inline constexpr int64_t kWinogradPointPad = 16;

/// Scratch floats one block of `tiles` tiles and `channels` output channels needs.
inline int64_t winograd_scratch(const WinogradConv& conv, int64_t tiles, int64_t channels) {
  return kWinogradPoints * ((conv.cin + channels) * tiles + 2 * kWinogradPointPad);
}

/// Output channels [c0, c1) of the tiles [t0, t1) of y [cout, oh, ow] from x [cin, h, w]:
/// y = conv(x) + bias, clamped. Tiles past the map's right or bottom edge write only what lies
/// inside it. Runs on the calling thread (one single-threaded sgemm per transformed point);
/// scratch holds winograd_scratch(conv, t1 - t0, c1 - c0) floats. Blocks write disjoint
/// outputs, and a block's result does not depend on the other blocks or the thread.
void winograd_block(const WinogradConv& conv, const float* x, int64_t h, int64_t w, float* y,
                    int64_t oh, int64_t ow, int64_t t0, int64_t t1, int64_t c0, int64_t c1,
                    float* scratch);

}  // namespace patchcore
