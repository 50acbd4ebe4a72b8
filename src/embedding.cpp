#include "embedding.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "error.h"
#include "resample.h"

namespace patchcore {
namespace {

// Bin i of an adaptive average pooling of L inputs into O outputs, as torch computes it. When
// L < O bins repeat inputs (up-sampling), when L / O is not an integer neighbouring bins overlap.
std::pair<int64_t, int64_t> pool_bin(int64_t i, int64_t L, int64_t O) {
  return {(i * L) / O, ((i + 1) * L + O - 1) / O};
}

void check_params(const EmbeddingParams& p) {
  if (p.patch_size < 1 || p.patch_size % 2 == 0)
    throw_usage("embedding: patch size must be odd and >= 1, got " + std::to_string(p.patch_size));
  if (p.mode == EmbeddingMode::paper && (p.pretrain_dim < 1 || p.target_dim < 1))
    throw_usage("embedding: pretrain_dim and target_dim must be >= 1, got " +
                std::to_string(p.pretrain_dim) + " and " + std::to_string(p.target_dim));
}

struct Shape {
  int64_t n = 0, c = 0, h = 0, w = 0;
};

std::vector<Shape> check_features(const std::vector<Tensor>& features) {
  PATCHCORE_ASSERT(!features.empty());
  std::vector<Shape> shapes;
  for (const Tensor& f : features) {
    PATCHCORE_ASSERT(f.shape.size() == 4);
    PATCHCORE_ASSERT(f.numel() == Tensor::count(f.shape));
    Shape s{f.dim(0), f.dim(1), f.dim(2), f.dim(3)};
    PATCHCORE_ASSERT(s.c >= 1 && s.h >= 1 && s.w >= 1);
    PATCHCORE_ASSERT(s.n == features[0].dim(0));
    shapes.push_back(s);
  }
  return shapes;
}

// Output channel t of a layer's contribution = sum of weight * input channel c shifted by
// (dy, dx) with zeros outside the layer's grid, then resized to the first layer's grid.
struct Tap {
  int32_t c;
  int32_t dy;
  int32_t dx;
  float w;
};

struct LayerPlan {
  Shape shape;
  bool same_grid = true;
  std::vector<int64_t> start;  // taps of output t: taps[start[t], start[t + 1])
  std::vector<Tap> taps;
  std::vector<Lerp> ly, lx;
};

// Paper mode: the per-layer pooling and the pooling of the concatenation are both sparse linear
// maps of the flattened neighbourhoods; compose them into one map per layer.
void plan_paper(std::vector<LayerPlan>& plans, const EmbeddingParams& p) {
  const int64_t pp = int64_t{p.patch_size} * p.patch_size;
  const int64_t pad = p.patch_size / 2;
  const int64_t pd = p.pretrain_dim, td = p.target_dim;
  const int64_t concat_len = pd * static_cast<int64_t>(plans.size());
  std::vector<std::vector<std::pair<int64_t, double>>> acc(plans.size());
  for (auto& plan : plans) plan.start.assign(td + 1, 0);
  for (int64_t t = 0; t < td; ++t) {
    for (auto& a : acc) a.clear();
    auto [s, e] = pool_bin(t, concat_len, td);
    const double wf = 1.0 / static_cast<double>(e - s);
    for (int64_t g = s; g < e; ++g) {
      const size_t l = static_cast<size_t>(g / pd);
      const int64_t L = plans[l].shape.c * pp;
      auto [s2, e2] = pool_bin(g % pd, L, pd);
      const double w = wf / static_cast<double>(e2 - s2);
      for (int64_t j = s2; j < e2; ++j) acc[l].push_back({j, w});
    }
    for (size_t l = 0; l < plans.size(); ++l) {
      auto& a = acc[l];
      std::sort(a.begin(), a.end());
      for (size_t i = 0; i < a.size();) {
        const int64_t j = a[i].first;
        double w = 0;
        for (; i < a.size() && a[i].first == j; ++i) w += a[i].second;
        const int64_t k = j % pp;
        plans[l].taps.push_back(
            {static_cast<int32_t>(j / pp), static_cast<int32_t>(k / p.patch_size - pad),
             static_cast<int32_t>(k % p.patch_size - pad), static_cast<float>(w)});
      }
      plans[l].start[t + 1] = static_cast<int64_t>(plans[l].taps.size());
    }
  }
}

// q[h, w] += sum over taps of w * shift(src channel c, dy, dx).
void apply_taps(const Tap* begin, const Tap* end, const float* image, const Shape& s, float* q) {
  const int64_t h = s.h, w = s.w;
  for (const Tap* tap = begin; tap != end; ++tap) {
    const float* src = image + tap->c * h * w;
    const int64_t y0 = std::max<int64_t>(0, -tap->dy), y1 = std::min<int64_t>(h, h - tap->dy);
    const int64_t x0 = std::max<int64_t>(0, -tap->dx), x1 = std::min<int64_t>(w, w - tap->dx);
    const float wt = tap->w;
    for (int64_t y = y0; y < y1; ++y) {
      float* qr = q + y * w;
      const float* sr = src + (y + tap->dy) * w + tap->dx;
      for (int64_t x = x0; x < x1; ++x) qr[x] += wt * sr[x];
    }
  }
}

// out[H, W] += bilinear resize of q[h, w]; tmp holds h * W floats.
void resize_add(const float* q, const LayerPlan& plan, int64_t H, int64_t W, float* tmp,
                float* out) {
  const int64_t h = plan.shape.h, w = plan.shape.w;
  for (int64_t y = 0; y < h; ++y) {
    const float* qr = q + y * w;
    float* tr = tmp + y * W;
    for (int64_t x = 0; x < W; ++x) {
      const Lerp& l = plan.lx[x];
      tr[x] = l.w0 * qr[l.i0] + l.w1 * qr[l.i1];
    }
  }
  for (int64_t y = 0; y < H; ++y) {
    const Lerp& l = plan.ly[y];
    const float* a = tmp + l.i0 * W;
    const float* b = tmp + l.i1 * W;
    float* o = out + y * W;
    for (int64_t x = 0; x < W; ++x) o[x] += l.w0 * a[x] + l.w1 * b[x];
  }
}

// ---- concat mode: channel-last box sums ----
//
// A channel block (at most kLanes channels of one layer) is transposed to channel-last and
// zero-padded by pad pixels, so that both halves of the separable box sum are plain sums of
// shifted contiguous runs (no edge cases, full-width vector adds).
constexpr int64_t kLanes = 16;

// t[y, pad + x, c] = src[c, y, x] for c < nc, with zeros in lanes nc.. and in the pad columns on
// either side of each row: t is [h, w + 2 pad, kLanes].
__attribute__((target_clones("avx2", "default"))) void gather_block(const float* src, int64_t h,
                                                                    int64_t w, int64_t pad,
                                                                    int64_t nc, float* t) {
  const int64_t row = (w + 2 * pad) * kLanes;
  for (int64_t y = 0; y < h; ++y) {
    float* tr = t + y * row;
    std::fill(tr, tr + pad * kLanes, 0.0f);
    std::fill(tr + (pad + w) * kLanes, tr + row, 0.0f);
    for (int64_t x = 0; x < w; ++x) {
      float* v = tr + (pad + x) * kLanes;
      const float* s = src + y * w + x;
      for (int64_t c = 0; c < kLanes; ++c) v[c] = c < nc ? s[c * h * w] : 0.0f;
    }
  }
}

// r[pad + y, x] = sum of t[y, x + d], d < p (the row half), with pad zero rows above and below:
// r is [h + 2 pad, w, kLanes].
__attribute__((target_clones("avx2", "default"))) void box_rows(const float* t, int64_t h,
                                                                int64_t w, int64_t pad, float* r) {
  const int64_t n = w * kLanes, p = 2 * pad + 1;
  std::fill(r, r + pad * n, 0.0f);
  std::fill(r + (pad + h) * n, r + (2 * pad + h) * n, 0.0f);
  for (int64_t y = 0; y < h; ++y) {
    const float* tr = t + y * (w + 2 * pad) * kLanes;
    float* __restrict rr = r + (pad + y) * n;
    std::copy(tr, tr + n, rr);
    for (int64_t d = 1; d < p; ++d)
      for (int64_t j = 0; j < n; ++j) rr[j] += tr[d * kLanes + j];
  }
}

// dst[(y, x) * ld + c] = scale * sum of r[y + d, x, c], d < p, for c < nc (the column half,
// written into the layer's channel-last box sums); acc holds w * kLanes floats.
__attribute__((target_clones("avx2", "default"))) void box_cols(const float* r, int64_t h,
                                                                int64_t w, int64_t pad, float scale,
                                                                float* acc, float* dst, int64_t ld,
                                                                int64_t nc) {
  const int64_t n = w * kLanes, p = 2 * pad + 1;
  for (int64_t y = 0; y < h; ++y) {
    std::copy(r + y * n, r + (y + 1) * n, acc);
    for (int64_t d = 1; d < p; ++d) {
      const float* __restrict rr = r + (y + d) * n;
      for (int64_t j = 0; j < n; ++j) acc[j] += rr[j];
    }
    for (int64_t x = 0; x < w; ++x) {
      float* __restrict o = dst + (y * w + x) * ld;
      for (int64_t c = 0; c < nc; ++c) o[c] = scale * acc[x * kLanes + c];
    }
  }
}

// out[X * D + c] = q sampled bilinearly at (Y, X) of the first grid, c < nc, X < W: one output
// row of a layer on a coarser (or finer) grid; q is the layer's [h, w, nc] box sums.
__attribute__((target_clones("avx2", "default"))) void resize_row(const float* q,
                                                                  const LayerPlan& plan, int64_t Y,
                                                                  int64_t W, int64_t nc, float* out,
                                                                  int64_t D) {
  const int64_t w = plan.shape.w;
  const Lerp& ly = plan.ly[Y];
  const float wy0 = ly.w0, wy1 = ly.w1;
  for (int64_t x = 0; x < W; ++x) {
    const Lerp& lx = plan.lx[x];
    const float wx0 = lx.w0, wx1 = lx.w1;
    const float* a0 = q + (ly.i0 * w + lx.i0) * nc;
    const float* a1 = q + (ly.i0 * w + lx.i1) * nc;
    const float* b0 = q + (ly.i1 * w + lx.i0) * nc;
    const float* b1 = q + (ly.i1 * w + lx.i1) * nc;
    float* __restrict o = out + x * D;
    for (int64_t c = 0; c < nc; ++c)
      o[c] = wy0 * (wx0 * a0[c] + wx1 * a1[c]) + wy1 * (wx0 * b0[c] + wx1 * b1[c]);
  }
}

// Layers, their grids relative to the first one, and the scratch sizes their resizing needs.
struct Plans {
  std::vector<LayerPlan> layers;
  int64_t max_hw = 0;   // largest h * w of a layer that is resized
  int64_t max_tmp = 0;  // largest h * W of a layer that is resized
};

Plans make_plans(const std::vector<Shape>& shapes) {
  const int64_t H = shapes[0].h, W = shapes[0].w;
  Plans plans;
  plans.layers.resize(shapes.size());
  for (size_t l = 0; l < shapes.size(); ++l) {
    LayerPlan& plan = plans.layers[l];
    plan.shape = shapes[l];
    plan.same_grid = shapes[l].h == H && shapes[l].w == W;
    if (!plan.same_grid) {
      plan.ly = lerp_table(shapes[l].h, H);
      plan.lx = lerp_table(shapes[l].w, W);
      plans.max_hw = std::max(plans.max_hw, shapes[l].h * shapes[l].w);
      plans.max_tmp = std::max(plans.max_tmp, shapes[l].h * W);
    }
  }
  return plans;
}

// Threads cost more than they save on tiny inputs (and on a loaded machine); work counts the
// multiply-adds of the tap formulation, whichever path runs.
bool use_threads(int64_t n_units, int64_t N, int64_t work) {
  return n_units > 1 && N * work > (int64_t{1} << 18);
}

// Paper mode (any tap plan). Work unit: one image and a block of output channels, computed as
// planes (so the shifted accumulations vectorise) and then transposed into the row-major patch
// matrix.
void embed_taps(const std::vector<Tensor>& features, const Plans& plans, int64_t D, float* out) {
  const Shape& s0 = plans.layers[0].shape;
  const int64_t N = s0.n, H = s0.h, W = s0.w, HW = H * W;
  constexpr int64_t kBlock = 16;
  const int64_t n_blocks = (D + kBlock - 1) / kBlock;
  const int64_t n_units = N * n_blocks;
  int64_t work = 0;
  for (const LayerPlan& plan : plans.layers)
    work += static_cast<int64_t>(plan.taps.size()) * plan.shape.h * plan.shape.w;
#pragma omp parallel if (use_threads(n_units, N, work))
  {
    std::vector<float> buf(kBlock * HW), q(plans.max_hw), tmp(plans.max_tmp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t unit = 0; unit < n_units; ++unit) {
      const int64_t n = unit / n_blocks;
      const int64_t t0 = (unit % n_blocks) * kBlock;
      const int64_t nt = std::min(kBlock, D - t0);
      std::fill(buf.begin(), buf.end(), 0.0f);
      for (size_t l = 0; l < plans.layers.size(); ++l) {
        const LayerPlan& plan = plans.layers[l];
        const Shape& s = plan.shape;
        const float* image = features[l].ptr() + n * s.c * s.h * s.w;
        for (int64_t i = 0; i < nt; ++i) {
          const Tap* b = plan.taps.data() + plan.start[t0 + i];
          const Tap* e = plan.taps.data() + plan.start[t0 + i + 1];
          if (b == e) continue;
          float* plane = buf.data() + i * HW;
          if (plan.same_grid) {
            apply_taps(b, e, image, s, plane);
          } else {
            std::fill(q.begin(), q.begin() + s.h * s.w, 0.0f);
            apply_taps(b, e, image, s, q.data());
            resize_add(q.data(), plan, H, W, tmp.data(), plane);
          }
        }
      }
      for (int64_t pix = 0; pix < HW; ++pix) {
        float* row = out + (n * HW + pix) * D + t0;
        for (int64_t i = 0; i < nt; ++i) row[i] = buf[i * HW + pix];
      }
    }
  }
}

// A concat unit's channels: [c0, c0 + nc) of one layer, written to output columns [col, ...).
struct ChannelBlock {
  size_t layer;
  int64_t c0, nc, col;
};

std::vector<ChannelBlock> channel_blocks(const Plans& plans) {
  std::vector<ChannelBlock> blocks;
  int64_t col = 0;
  for (size_t l = 0; l < plans.layers.size(); ++l) {
    const int64_t c = plans.layers[l].shape.c;
    for (int64_t c0 = 0; c0 < c; c0 += kLanes)
      blocks.push_back({l, c0, std::min(kLanes, c - c0), col + c0});
    col += c;
  }
  return blocks;
}

// Per-thread scratch of the box sums, [pixel, kLanes] each.
struct BoxScratch {
  std::vector<float> t, r, acc;
};

// Box sums of one block of one image's channels on the layer's own grid: p x p, separable (rows,
// then columns with the 1 / (p * p) scale), into dst[pix * ld + c], c < nc.
void box_block(const float* image, const LayerPlan& plan, const ChannelBlock& b, int64_t pad,
               float scale, BoxScratch& s, float* dst, int64_t ld) {
  const Shape& sh = plan.shape;
  const int64_t hw = sh.h * sh.w;
  gather_block(image + b.c0 * hw, sh.h, sh.w, pad, b.nc, s.t.data());
  box_rows(s.t.data(), sh.h, sh.w, pad, s.r.data());
  box_cols(s.r.data(), sh.h, sh.w, pad, scale, s.acc.data(), dst, ld, b.nc);
}

// Output row Y of one image: the layers not on the first grid, their box sums q[l] sampled
// bilinearly at (Y, X) (the others are already in place).
void assemble_row(const std::vector<float*>& q, const Plans& plans, int64_t Y, int64_t W, int64_t D,
                  float* out) {
  int64_t col = 0;
  for (size_t l = 0; l < plans.layers.size(); ++l) {
    const LayerPlan& plan = plans.layers[l];
    if (!plan.same_grid) resize_row(q[l], plan, Y, W, plan.shape.c, out + col, D);
    col += plan.shape.c;
  }
}

// Concat mode, image by image in two parallel steps: units of channel blocks compute every
// layer's box sums channel-last (layers on the first grid straight into the output, the others
// into q), then units of output rows resize q into place. Resizing row by row writes contiguous
// runs of the output; one image at a time keeps q small enough to stay in cache.
void embed_concat(const std::vector<Tensor>& features, const Plans& plans, int patch_size,
                  int64_t D, float* out) {
  const Shape& s0 = plans.layers[0].shape;
  const int64_t N = s0.n, H = s0.h, W = s0.w, HW = H * W;
  const int64_t pad = patch_size / 2, pp = int64_t{patch_size} * patch_size;
  const float scale = 1.0f / static_cast<float>(pp);
  const std::vector<ChannelBlock> blocks = channel_blocks(plans);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  int64_t work = 0, max_t = 0, max_r = 0, max_w = 0;
  std::vector<std::vector<float>> q_store;
  std::vector<float*> q;
  for (const LayerPlan& plan : plans.layers) {
    const int64_t own = plan.shape.h * plan.shape.w;
    work += plan.shape.c * pp * own;
    max_t = std::max(max_t, plan.shape.h * (plan.shape.w + 2 * pad));
    max_r = std::max(max_r, (plan.shape.h + 2 * pad) * plan.shape.w);
    max_w = std::max(max_w, plan.shape.w);
    q_store.emplace_back(plan.same_grid ? 0 : plan.shape.c * own);
    q.push_back(q_store.back().data());
  }
#pragma omp parallel if (use_threads(N * n_blocks, N, work))
  {
    BoxScratch s;
    s.t.resize(max_t * kLanes);
    s.r.resize(max_r * kLanes);
    s.acc.resize(max_w * kLanes);
    for (int64_t n = 0; n < N; ++n) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < n_blocks; ++i) {
        const ChannelBlock& b = blocks[i];
        const LayerPlan& plan = plans.layers[b.layer];
        const Shape& sh = plan.shape;
        const float* image = features[b.layer].ptr() + n * sh.c * sh.h * sh.w;
        if (plan.same_grid)
          box_block(image, plan, b, pad, scale, s, out + n * HW * D + b.col, D);
        else
          box_block(image, plan, b, pad, scale, s, q[b.layer] + b.c0, sh.c);
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t y = 0; y < H; ++y) assemble_row(q, plans, y, W, D, out + (n * HW + y * W) * D);
    }
  }
}

// ---- literal reference helpers ----

std::vector<double> adaptive_pool(const std::vector<double>& v, int64_t O) {
  const int64_t L = static_cast<int64_t>(v.size());
  std::vector<double> out(O);
  for (int64_t i = 0; i < O; ++i) {
    auto [s, e] = pool_bin(i, L, O);
    double sum = 0;
    for (int64_t j = s; j < e; ++j) sum += v[j];
    out[i] = sum / static_cast<double>(e - s);
  }
  return out;
}

// A [h, w, K] map sampled at (Y, X) of an H x W grid, straight from torch's formula.
std::vector<double> bilinear_at(const std::vector<double>& m, int64_t h, int64_t w, int64_t K,
                                int64_t H, int64_t W, int64_t Y, int64_t X) {
  auto axis = [](int64_t d, int64_t in, int64_t out, int64_t& i0, int64_t& i1, double& f) {
    double src =
        (static_cast<double>(d) + 0.5) * static_cast<double>(in) / static_cast<double>(out) - 0.5;
    if (src < 0) src = 0;
    i0 = static_cast<int64_t>(std::floor(src));
    if (i0 > in - 1) i0 = in - 1;
    i1 = i0 + 1 < in ? i0 + 1 : in - 1;
    f = src - static_cast<double>(i0);
    if (i1 == i0) f = 0;
  };
  int64_t y0, y1, x0, x1;
  double fy, fx;
  axis(Y, h, H, y0, y1, fy);
  axis(X, w, W, x0, x1, fx);
  std::vector<double> r(K);
  for (int64_t k = 0; k < K; ++k) {
    auto at = [&](int64_t y, int64_t x) { return m[(y * w + x) * K + k]; };
    r[k] = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) +
           fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1));
  }
  return r;
}

}  // namespace

int embedding_dim(const std::vector<int64_t>& channels, const EmbeddingParams& p) {
  check_params(p);
  if (channels.empty()) throw_usage("embedding: no feature layers");
  if (p.mode == EmbeddingMode::paper) return p.target_dim;
  int64_t d = 0;
  for (int64_t c : channels) {
    PATCHCORE_ASSERT(c >= 1);
    d += c;
  }
  return static_cast<int>(d);
}

EmbeddingLayout embedding_layout(const std::vector<Tensor>& features, const EmbeddingParams& p) {
  check_params(p);
  const std::vector<Shape> shapes = check_features(features);
  std::vector<int64_t> channels;
  for (const Shape& s : shapes) channels.push_back(s.c);
  EmbeddingLayout layout;
  layout.rows = shapes[0].n * shapes[0].h * shapes[0].w;
  layout.dim = embedding_dim(channels, p);
  layout.grid_h = static_cast<int>(shapes[0].h);
  layout.grid_w = static_cast<int>(shapes[0].w);
  return layout;
}

Embedding embed(const std::vector<Tensor>& features, const EmbeddingParams& p) {
  const EmbeddingLayout layout = embedding_layout(features, p);
  Embedding result;
  result.grid_h = layout.grid_h;
  result.grid_w = layout.grid_w;
  result.patches = Tensor({layout.rows, layout.dim});
  embed_into(features, p, result.patches.ptr());
  return result;
}

void embed_into(const std::vector<Tensor>& features, const EmbeddingParams& p, float* out) {
  check_params(p);
  const std::vector<Shape> shapes = check_features(features);
  std::vector<int64_t> channels;
  for (const Shape& s : shapes) channels.push_back(s.c);
  const int64_t D = embedding_dim(channels, p);
  Plans plans = make_plans(shapes);
  if (p.mode == EmbeddingMode::paper) {
    plan_paper(plans.layers, p);
    embed_taps(features, plans, D, out);
  } else {
    embed_concat(features, plans, p.patch_size, D, out);
  }
}

Embedding embed_reference(const std::vector<Tensor>& features, const EmbeddingParams& p) {
  check_params(p);
  const std::vector<Shape> shapes = check_features(features);
  std::vector<int64_t> channels;
  for (const Shape& s : shapes) channels.push_back(s.c);
  const int64_t D = embedding_dim(channels, p);
  const int64_t N = shapes[0].n, H = shapes[0].h, W = shapes[0].w;
  const int64_t ps = p.patch_size, pad = ps / 2;

  Embedding result;
  result.grid_h = static_cast<int>(H);
  result.grid_w = static_cast<int>(W);
  result.patches = Tensor({N * H * W, D});
  for (int64_t n = 0; n < N; ++n) {
    // Per layer, per position of the first grid: that layer's vector.
    std::vector<std::vector<std::vector<double>>> per_layer(shapes.size());
    for (size_t l = 0; l < shapes.size(); ++l) {
      const Shape& s = shapes[l];
      auto value = [&](int64_t c, int64_t y, int64_t x) -> double {
        if (y < 0 || y >= s.h || x < 0 || x >= s.w) return 0.0;
        return features[l].data[((n * s.c + c) * s.h + y) * s.w + x];
      };
      // Per position of the layer's own grid: neighbourhood (paper) or average (concat).
      const int64_t K = p.mode == EmbeddingMode::paper ? s.c * ps * ps : s.c;
      std::vector<double> m(s.h * s.w * K);
      for (int64_t y = 0; y < s.h; ++y)
        for (int64_t x = 0; x < s.w; ++x) {
          double* v = m.data() + (y * s.w + x) * K;
          for (int64_t c = 0; c < s.c; ++c)
            for (int64_t ky = 0; ky < ps; ++ky)
              for (int64_t kx = 0; kx < ps; ++kx) {
                const double f = value(c, y + ky - pad, x + kx - pad);
                if (p.mode == EmbeddingMode::paper)
                  v[c * ps * ps + ky * ps + kx] = f;
                else
                  v[c] += f / static_cast<double>(ps * ps);
              }
        }
      per_layer[l].resize(H * W);
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          per_layer[l][y * W + x] = bilinear_at(m, s.h, s.w, K, H, W, y, x);
    }
    for (int64_t pos = 0; pos < H * W; ++pos) {
      std::vector<double> v;
      for (size_t l = 0; l < shapes.size(); ++l) {
        std::vector<double> part = per_layer[l][pos];
        if (p.mode == EmbeddingMode::paper) part = adaptive_pool(part, p.pretrain_dim);
        v.insert(v.end(), part.begin(), part.end());
      }
      if (p.mode == EmbeddingMode::paper) v = adaptive_pool(v, p.target_dim);
      PATCHCORE_ASSERT(static_cast<int64_t>(v.size()) == D);
      float* row = result.patches.row(n * H * W + pos);
      for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(v[d]);
    }
  }
  return result;
}

}  // namespace patchcore
