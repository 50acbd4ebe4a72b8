// The GEMM engine: an interpreter for the ONNX operators our backbones use, every convolution
// done by single-threaded BLAS sgemm calls on blocks of its im2col matrix (NCHW, one image at
// a time, blocks shared out to the OpenMP threads).
//
// Written by hand because no Debian package does this well here: OpenCV DNN 4.6 runs
// InceptionV3 at 68-78 GFLOP/s on this 2-core machine while OpenBLAS's sgemm reaches 134-173,
// and libtorch 1.13 was slower than OpenCV (docs/benchmarks.md). Everything but the
// convolutions (pads, pools, adds, concatenations) is memory-bound bookkeeping and stays plain.

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>

#include "backbone.h"
#include "backbone_ops.h"
#include "blas.h"
#include "error.h"
#include "omp_threads.h"
#include "onnx_graph.h"
#include "winograd.h"

namespace patchcore {

namespace {

// One image's tensor [c, h, w].
struct Blob {
  int64_t c = 0, h = 0, w = 0;
  std::vector<float> data;
  int64_t plane() const { return h * w; }
};

// 3 x 3 convolutions of stride 1 with enough channels go to Winograd's F(2 x 2, 3 x 3), whose
// GEMMs have K = cin instead of 9 cin: with fewer channels BLAS is slow on such thin products
// and the transforms cost more than they save (147 x 147, one thread: 8 -> 32 channels took
// 4.7-5.5 ms against 4.4 ms by im2col, 16 -> 32 6.2-7.1 ms against 8.2-8.7).
constexpr int64_t kMinWinogradChannels = 16;
void use_winograd(std::vector<Op>& ops) {
  for (Op& op : ops) {
    if (op.kind != Kind::conv || op.kh != 3 || op.kw != 3 || op.sh != 1 || op.sw != 1 ||
        op.dh != 1 || op.dw != 1 || op.group != 1 || op.cin_per_group < kMinWinogradChannels ||
        op.cout < kMinWinogradChannels) {
      continue;
    }
    WinogradConv w = make_winograd_conv(op.weight.data(), op.cout, op.cin_per_group, op.pt, op.pl);
    w.bias = op.bias;
    if (op.act == Act::relu) w.lo = 0.0f;
    if (op.act == Act::clip) {
      w.lo = op.lo;
      w.hi = op.hi;
    }
    op.winograd = std::make_shared<const WinogradConv>(std::move(w));
    op.weight = {};
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels. Each output value is computed by one task in a fixed order, and the GEMMs are cut
// by rules that depend on the layer only, so results do not depend on the thread count (a
// multi-threaded OpenBLAS sgemm does not give the bits of a single-threaded one).

// fn(i) for i in [0, n) on the OpenMP threads, so BLAS runs single-threaded inside. OpenMP rather
// than OpenCV's pool (TBB), which a first version used: the rest of the pipeline (FAISS, OpenBLAS,
// embedding, search) runs on OpenMP, and two pools in one process took the cores from each other
// (hei_med predict, backbone 2.6-3.3 s with TBB vs 2.0-2.9 s).
// Inside an image-parallel team (GemmBackbone::forward) it runs on the calling thread.
template <class F>
void parallel(int64_t n, F&& fn) {
#pragma omp parallel for schedule(dynamic) if (!omp_in_parallel())
  for (int64_t i = 0; i < n; ++i) fn(i);
}

// Rows [r0, r1) and columns [n0, n1) of the im2col matrix of group channels from c0:
// col[r, p - n0] = x[c0 + ci, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw] (0 outside the image) for
// p = oy * ow + ox and r = (ci * kh + ky) * kw + kx, the row order of the weights
// [cout, cin, kh, kw]. col holds row r at col + r * (n1 - n0).
void im2col(const Op& op, const Blob& x, int64_t c0, int64_t ow, int64_t n0, int64_t n1, int64_t r0,
            int64_t r1, float* col) {
  const int64_t ld = n1 - n0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t ci = r / (op.kh * op.kw), ky = (r / op.kw) % op.kh, kx = r % op.kw;
    const float* src = x.data.data() + (c0 + ci) * x.plane();
    // ox in [x0, x1) reads inside the image's row: ix = ox * sw + off
    const int64_t off = kx * op.dw - op.pl;
    const int64_t x0 = off >= 0 ? 0 : std::min(ow, (-off + op.sw - 1) / op.sw);
    const int64_t x1 = x.w - 1 - off < 0 ? 0 : std::min(ow, (x.w - 1 - off) / op.sw + 1);
    for (int64_t p = n0; p < n1;) {
      const int64_t oy = p / ow, ox_begin = p % ow, ox_end = std::min(ow, ox_begin + (n1 - p));
      float* d = col + r * ld + (p - n0) - ox_begin;  // d[ox] is column p + ox - ox_begin
      p += ox_end - ox_begin;
      const int64_t iy = oy * op.sh - op.pt + ky * op.dh;
      if (iy < 0 || iy >= x.h) {
        std::fill(d + ox_begin, d + ox_end, 0.0f);
        continue;
      }
      const int64_t a = std::max(ox_begin, x0), b = std::max(a, std::min(ox_end, x1));
      const float* s = src + iy * x.w + off;
      std::fill(d + ox_begin, d + a, 0.0f);
      if (op.sw == 1) {
        std::copy(s + a, s + b, d + a);
      } else {
        for (int64_t ox = a; ox < b; ++ox) d[ox] = s[ox * op.sw];
      }
      std::fill(d + b, d + ox_end, 0.0f);
    }
  }
}

// Adds the bias and applies the fused activation to channels [c0, c1), columns [n0, n1).
void bias_and_activation(const Op& op, Blob& y, int64_t c0, int64_t c1, int64_t n0, int64_t n1) {
  if (op.bias.empty() && op.act == Act::none) return;
  for (int64_t c = c0; c < c1; ++c) {
    float* v = y.data.data() + c * y.plane();
    const float b = op.bias.empty() ? 0.0f : op.bias[static_cast<size_t>(c)];
    switch (op.act) {
      case Act::none:
        for (int64_t i = n0; i < n1; ++i) v[i] += b;
        break;
      case Act::relu:
        for (int64_t i = n0; i < n1; ++i) v[i] = std::max(v[i] + b, 0.0f);
        break;
      case Act::clip:
        for (int64_t i = n0; i < n1; ++i) v[i] = std::min(std::max(v[i] + b, op.lo), op.hi);
        break;
    }
  }
}

// One filter per channel: no GEMM to speak of (K = kh * kw), so a direct loop.
void depthwise(const Op& op, const Blob& x, Blob& y) {
  const int64_t off_x = -op.pl;
  parallel(y.c, [&](int64_t c) {
    const float* src = x.data.data() + c * x.plane();
    float* dst = y.data.data() + c * y.plane();
    std::fill(dst, dst + y.plane(), 0.0f);
    for (int64_t ky = 0; ky < op.kh; ++ky) {
      for (int64_t kx = 0; kx < op.kw; ++kx) {
        const float wv = op.weight[static_cast<size_t>((c * op.kh + ky) * op.kw + kx)];
        const int64_t off = kx * op.dw + off_x;
        const int64_t x0 = off >= 0 ? 0 : std::min(y.w, (-off + op.sw - 1) / op.sw);
        const int64_t x1 = x.w - 1 - off < 0 ? 0 : std::min(y.w, (x.w - 1 - off) / op.sw + 1);
        for (int64_t oy = 0; oy < y.h; ++oy) {
          const int64_t iy = oy * op.sh - op.pt + ky * op.dh;
          if (iy < 0 || iy >= x.h) continue;
          const float* s = src + iy * x.w + off;
          float* d = dst + oy * y.w;
          for (int64_t ox = x0; ox < x1; ++ox) d[ox] += wv * s[ox * op.sw];
        }
      }
    }
    bias_and_activation(op, y, c, c + 1, 0, y.plane());
  });
}

// Y[c0:c1, n0:n1] = W[c0:c1, :] B[:, n0:n1] for B of leading dimension ldb, one BLAS thread
// (the caller's loop is the parallel one). Row-major Y = W B is column-major Y^T = B^T W^T.
void gemm_block(const Op& op, const float* b, int64_t ldb, int64_t c0, int64_t c1, int64_t n0,
                int64_t n1, Blob& y) {
  const int64_t k = op.cin_per_group * op.kh * op.kw;
  const int m_ = static_cast<int>(n1 - n0), n_ = static_cast<int>(c1 - c0),
            k_ = static_cast<int>(k), ldb_ = static_cast<int>(ldb),
            ldc_ = static_cast<int>(y.plane());
  const float one = 1.0f, zero = 0.0f;
  sgemm_("N", "N", &m_, &n_, &k_, &one, b, &ldb_, op.weight.data() + c0 * k, &k_, &zero,
         y.data.data() + c0 * y.plane() + n0, &ldc_);
  bias_and_activation(op, y, c0, c1, n0, n1);
}

// The GEMM Y = W B of a convolution is cut into column blocks (output positions) and channel
// blocks, one task each with a single-threaded sgemm. On large maps each column block's task
// builds its own im2col rows just before multiplying them, while they are in cache: on
// InceptionV3's 147 x 147 and 71 x 71 layers that took 22 instead of 28 ms per image compared
// with one im2col matrix and a multi-threaded sgemm. Small maps (35 x 35, 17 x 17) have too
// few columns to share out, so their output channels are shared out as well, over one im2col
// matrix built first by all threads. The cut depends on the layer only, never on the thread
// count: OpenBLAS's results depend on how a product is cut.
constexpr int64_t kColumnBlockFloats = 256 * 1024;  // 1 MB of im2col per column block
constexpr int64_t kMinBlockColumns = 128;
constexpr int64_t kMinBlockChannels = 32;
constexpr int64_t kMinTasks = 4;

// Blocks of `items` (columns or tiles) of `floats_per_item` each: about `budget` floats a
// block, but no block under `min_items`.
int64_t item_blocks(int64_t items, int64_t floats_per_item, int64_t budget, int64_t min_items) {
  return std::max<int64_t>(
      1, std::min((items * floats_per_item + budget - 1) / budget, items / min_items));
}

// Blocks of `channels` output channels, so that `item_blocks` blocks make kMinTasks tasks, none
// under kMinBlockChannels channels.
int64_t channel_blocks(int64_t item_blocks, int64_t channels) {
  if (item_blocks >= kMinTasks) return 1;
  return std::clamp<int64_t>((kMinTasks + item_blocks - 1) / item_blocks, 1,
                             std::max<int64_t>(1, channels / kMinBlockChannels));
}

// Tiles are cut like the im2col matrix's columns, by the layer only: the transformed inputs of
// a block take at most 512 KB (the L2 cache here; at 147 x 147 and 71 x 71, 512-640 KB blocks
// took 10-15 % less time than 64 KB or 1-2 MB ones), and small maps have their output channels
// shared out too.
constexpr int64_t kWinogradBlockFloats = 128 * 1024;
constexpr int64_t kMinBlockTiles = 32;

void winograd_conv(const WinogradConv& w, const Blob& x, Blob& y) {
  const int64_t tiles = winograd_tiles(y.h, y.w);
  const int64_t tile_blocks =
      item_blocks(tiles, kWinogradPoints * w.cin, kWinogradBlockFloats, kMinBlockTiles);
  const int64_t chan_blocks = channel_blocks(tile_blocks, w.cout);
  parallel(tile_blocks * chan_blocks, [&](int64_t t) {
    const int64_t tb = t / chan_blocks, hb = t % chan_blocks;
    const int64_t t0 = tb * tiles / tile_blocks, t1 = (tb + 1) * tiles / tile_blocks;
    const int64_t c0 = hb * w.cout / chan_blocks, c1 = (hb + 1) * w.cout / chan_blocks;
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(winograd_scratch(w, t1 - t0, c1 - c0)));
    winograd_block(w, x.data.data(), x.h, x.w, y.data.data(), y.h, y.w, t0, t1, c0, c1,
                   scratch.data());
  });
}

void conv(const Op& op, const Blob& x, Blob& y, std::vector<float>& shared_col) {
  if (op.winograd) {
    winograd_conv(*op.winograd, x, y);
    return;
  }
  const int64_t cout_g = op.cout / op.group;
  if (op.cin_per_group == 1 && cout_g == 1) {
    depthwise(op, x, y);
    return;
  }
  const int64_t n = y.plane();
  const int64_t k = op.cin_per_group * op.kh * op.kw;
  const bool direct = op.kh == 1 && op.kw == 1 && op.sh == 1 && op.sw == 1 && op.pt == 0 &&
                      op.pl == 0 && op.pb == 0 && op.pr == 0;
  PATCHCORE_ASSERT(k * std::max<int64_t>(n, 1) < std::numeric_limits<int>::max());
  const int64_t col_blocks = item_blocks(n, k, kColumnBlockFloats, kMinBlockColumns);
  const int64_t chan_blocks = channel_blocks(col_blocks, cout_g);
  for (int64_t g = 0; g < op.group; ++g) {
    const int64_t cin0 = g * op.cin_per_group;
    const int64_t cout0 = g * cout_g;
    const float* b = x.data.data() + cin0 * x.plane();  // B, of leading dimension n
    if (!direct && chan_blocks > 1) {
      shared_col.resize(static_cast<size_t>(k * n));
      float* col = shared_col.data();
      parallel(k, [&](int64_t r) { im2col(op, x, cin0, y.w, 0, n, r, r + 1, col); });
      b = col;
    }
    const bool own_col = !direct && chan_blocks == 1;
    parallel(col_blocks * chan_blocks, [&](int64_t t) {
      const int64_t cb = t / chan_blocks, hb = t % chan_blocks;
      const int64_t n0 = cb * n / col_blocks, n1 = (cb + 1) * n / col_blocks;
      const int64_t c0 = cout0 + hb * cout_g / chan_blocks;
      const int64_t c1 = cout0 + (hb + 1) * cout_g / chan_blocks;
      if (own_col) {
        thread_local std::vector<float> col;
        col.resize(static_cast<size_t>(k * (n1 - n0)));
        im2col(op, x, cin0, y.w, n0, n1, 0, k, col.data());
        gemm_block(op, col.data(), n1 - n0, c0, c1, n0, n1, y);
      } else {
        gemm_block(op, b + n0, n, c0, c1, n0, n1, y);
      }
    });
  }
}

// Max or average over each window, separably: a pass along rows into `rows` (x.h x y.w), one
// tap at a time so that the loops vectorise, then one along columns: k_h + k_w reads per
// output instead of k_h * k_w.
template <bool kMax>
void pool(const Op& op, const Blob& x, Blob& y) {
  auto combine = [](float a, float b) { return kMax ? std::max(a, b) : a + b; };
  const float start = kMax ? std::numeric_limits<float>::lowest() : 0.0f;
  // outputs [lo[t], hi[t]) of a row read tap t inside the image; windows never lie wholly in
  // the padding (checked when the graph is read), so each output gets at least one tap
  std::vector<int64_t> lo(static_cast<size_t>(op.kw)), hi(static_cast<size_t>(op.kw));
  for (int64_t t = 0; t < op.kw; ++t) {
    const int64_t off = t - op.pl;
    lo[static_cast<size_t>(t)] = off >= 0 ? 0 : std::min(y.w, (-off + op.sw - 1) / op.sw);
    hi[static_cast<size_t>(t)] = x.w - 1 - off < 0 ? 0 : std::min(y.w, (x.w - 1 - off) / op.sw + 1);
  }
  parallel(y.c, [&](int64_t c) {
    thread_local std::vector<float> rows;
    rows.resize(static_cast<size_t>(x.h * y.w));
    const float* src = x.data.data() + c * x.plane();
    float* dst = y.data.data() + c * y.plane();
    std::fill(rows.begin(), rows.end(), start);
    for (int64_t iy = 0; iy < x.h; ++iy) {
      float* r = rows.data() + iy * y.w;
      for (int64_t t = 0; t < op.kw; ++t) {
        const float* s = src + iy * x.w + t - op.pl;
        const int64_t h = hi[static_cast<size_t>(t)];
        if (op.sw == 1) {
          for (int64_t ox = lo[static_cast<size_t>(t)]; ox < h; ++ox) r[ox] = combine(r[ox], s[ox]);
        } else {
          for (int64_t ox = lo[static_cast<size_t>(t)]; ox < h; ++ox) {
            r[ox] = combine(r[ox], s[ox * op.sw]);
          }
        }
      }
    }
    for (int64_t oy = 0; oy < y.h; ++oy) {
      const int64_t y0 = std::max<int64_t>(oy * op.sh - op.pt, 0);
      const int64_t y1 = std::min(oy * op.sh - op.pt + op.kh, x.h);
      float* d = dst + oy * y.w;
      std::copy(rows.data() + y0 * y.w, rows.data() + (y0 + 1) * y.w, d);
      for (int64_t iy = y0 + 1; iy < y1; ++iy) {
        const float* r = rows.data() + iy * y.w;
        for (int64_t ox = 0; ox < y.w; ++ox) d[ox] = combine(d[ox], r[ox]);
      }
      if (!kMax) {
        for (int64_t ox = 0; ox < y.w; ++ox) {
          const int64_t x0 = std::max<int64_t>(ox * op.sw - op.pl, 0);
          const int64_t x1 = std::min(ox * op.sw - op.pl + op.kw, x.w);
          const int64_t count = op.count_include_pad ? op.kh * op.kw : (y1 - y0) * (x1 - x0);
          d[ox] /= static_cast<float>(count);
        }
      }
    }
  });
}

void run(const Op& op, const std::vector<const Blob*>& in, Blob& y, std::vector<float>& col) {
  const Blob& x = *in[0];
  const int64_t plane = x.plane();
  switch (op.kind) {
    case Kind::conv:
      conv(op, x, y, col);
      return;
    case Kind::max_pool:
      pool<true>(op, x, y);
      return;
    case Kind::avg_pool:
      pool<false>(op, x, y);
      return;
    case Kind::relu:
      std::transform(x.data.begin(), x.data.end(), y.data.begin(),
                     [](float v) { return std::max(v, 0.0f); });
      return;
    case Kind::clip:
      std::transform(x.data.begin(), x.data.end(), y.data.begin(),
                     [&](float v) { return std::min(std::max(v, op.lo), op.hi); });
      return;
    case Kind::add:
      std::transform(x.data.begin(), x.data.end(), in[1]->data.begin(), y.data.begin(),
                     std::plus<>());
      return;
    case Kind::copy:
      y.data = x.data;
      return;
    case Kind::mul: {
      const bool element = op.mul_h * op.mul_w > 1;  // else scalar or per channel
      parallel(x.c, [&](int64_t c) {
        for (int64_t i = c * plane; i < (c + 1) * plane; ++i) {
          const int64_t at = element ? i : op.mul_c == 1 ? 0 : c;
          y.data[i] = x.data[i] * op.scale[static_cast<size_t>(at)];
        }
      });
      return;
    }
    case Kind::scale_shift:
      parallel(x.c, [&](int64_t c) {
        const float s = op.scale[static_cast<size_t>(c)], t = op.shift[static_cast<size_t>(c)];
        for (int64_t i = c * plane; i < (c + 1) * plane; ++i) y.data[i] = x.data[i] * s + t;
      });
      return;
    case Kind::concat: {
      float* dst = y.data.data();
      for (const Blob* b : in) dst = std::copy(b->data.begin(), b->data.end(), dst);
      return;
    }
    case Kind::pad:
      std::fill(y.data.begin(), y.data.end(), op.value);
      for (int64_t c = 0; c < x.c; ++c) {
        for (int64_t r = 0; r < x.h; ++r) {
          const float* s = x.data.data() + c * plane + r * x.w;
          std::copy(s, s + x.w, y.data.data() + c * y.plane() + (r + op.pt) * y.w + op.pl);
        }
      }
      return;
  }
}

// What one image's forward pass allocates: freed maps go back to `spare` instead of to the
// system (glibc returns large blocks to the kernel, and faulting their pages in again cost 5 %
// of a forward pass), so the spares stay at the graph's largest live set.
struct Workspace {
  std::vector<std::vector<float>> spare;
  std::vector<float> col;  // the im2col matrix of small maps

  // A buffer of `size` floats (contents undefined): the smallest spare that is large enough,
  // else a new one.
  std::vector<float> acquire(int64_t size) {
    auto best = spare.end();
    for (auto it = spare.begin(); it != spare.end(); ++it) {
      if (static_cast<int64_t>(it->capacity()) >= size &&
          (best == spare.end() || it->capacity() < best->capacity())) {
        best = it;
      }
    }
    std::vector<float> b;
    if (best != spare.end()) {
      b = std::move(*best);
      spare.erase(best);
    }
    b.resize(static_cast<size_t>(size));
    return b;
  }
};

class GemmBackbone : public Backbone {
 public:
  GemmBackbone(const std::vector<uint8_t>& onnx, const std::vector<std::string>& layers,
               int threads)
      : graph_(read_op_graph(onnx, layers)), layers_(layers), threads_(threads) {
    use_winograd(graph_.ops);
  }

  // A batch of at least as many images as threads runs one image per thread, each pass on
  // one core: nothing then waits for the slowest thread at each of a pass's ~300 parallel
  // steps (on this 2-core VM a stalled vCPU held every step up). The rest of the batch, or a
  // single image, runs one image at a time with each layer shared out. Both give the same bits:
  // every layer is cut the same way whoever runs it.
  std::vector<Tensor> forward(const Tensor& batch) override {
    check_batch_shape(graph_.input_shape, batch);
    const int64_t n = batch.shape[0];
    const std::vector<Shape> shapes =
        value_shapes(graph_, batch.shape[1], batch.shape[2], batch.shape[3]);
    std::vector<Tensor> out(layers_.size());
    for (size_t k = 0; k < layers_.size(); ++k) {
      const Shape& s = shapes[static_cast<size_t>(graph_.outputs[k])];
      out[k] = Tensor({n, s.c, s.h, s.w});
    }
    OmpThreadsGuard omp_guard(threads_);
    const int team = std::max(1, omp_get_max_threads());
    if (static_cast<int>(workspaces_.size()) < team) workspaces_.resize(static_cast<size_t>(team));
    const int64_t per_image = n > 0 ? batch.numel() / n : 0;
    const int64_t whole = team > 1 ? n - n % team : 0;  // images run one per thread
    if (whole > 0) {
#pragma omp parallel for schedule(static) num_threads(team)
      for (int64_t i = 0; i < whole; ++i) {
        run_image(batch.data.data() + i * per_image, i, shapes,
                  workspaces_[static_cast<size_t>(omp_get_thread_num())], out);
      }
    }
    for (int64_t i = whole; i < n; ++i) {
      run_image(batch.data.data() + i * per_image, i, shapes, workspaces_[0], out);
    }
    return out;
  }

  const std::vector<std::string>& layers() const override { return layers_; }

  double flops_per_image(int height, int width) override {
    return conv_flops(graph_, height, width);
  }

  std::string engine() const override { return "gemm"; }

 private:
  // One image's pass, its requested layers copied into image i of `out`.
  void run_image(const float* image, int64_t i, const std::vector<Shape>& shapes, Workspace& ws,
                 std::vector<Tensor>& out) const {
    std::vector<Blob> v(static_cast<size_t>(graph_.values));
    auto make = [&](int value) -> Blob& {
      Blob& b = v[static_cast<size_t>(value)];
      const Shape& s = shapes[static_cast<size_t>(value)];
      b.c = s.c;
      b.h = s.h;
      b.w = s.w;
      b.data = ws.acquire(s.c * s.h * s.w);
      return b;
    };
    auto deliver = [&](int value) {
      for (size_t k = 0; k < layers_.size(); ++k) {
        if (graph_.outputs[k] != value) continue;
        const Blob& b = v[static_cast<size_t>(value)];
        std::copy(b.data.begin(), b.data.end(),
                  out[k].data.begin() + i * static_cast<int64_t>(b.data.size()));
      }
    };
    Blob& input = make(0);
    std::copy(image, image + input.data.size(), input.data.begin());
    deliver(0);
    for (size_t o = 0; o < graph_.ops.size(); ++o) {
      const Op& op = graph_.ops[o];
      std::vector<const Blob*> in;
      for (int id : op.inputs) in.push_back(&v[static_cast<size_t>(id)]);
      Blob& y = make(op.output);
      run(op, in, y, ws.col);
      deliver(op.output);
      for (int id : op.inputs) {
        if (graph_.last_use[static_cast<size_t>(id)] == static_cast<int>(o)) {
          ws.spare.push_back(std::move(v[static_cast<size_t>(id)].data));
        }
      }
    }
    for (Blob& b : v) {
      if (b.data.capacity() > 0) ws.spare.push_back(std::move(b.data));
    }
  }

  OpGraph graph_;
  std::vector<std::string> layers_;
  int threads_;
  std::vector<Workspace> workspaces_;  // one per thread of the image-parallel team
};

}  // namespace

std::unique_ptr<Backbone> try_gemm_backbone(const std::vector<uint8_t>& onnx,
                                            const std::vector<std::string>& layers, int threads,
                                            std::string* why) {
  try {
    return std::make_unique<GemmBackbone>(onnx, layers, threads);
  } catch (const Unsupported& e) {
    if (why != nullptr) *why = e.what();
    return nullptr;
  }
}

}  // namespace patchcore
