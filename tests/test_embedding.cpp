#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "embedding.h"
#include "error.h"

namespace patchcore {
namespace {

struct LayerShape {
  int64_t c, h, w;
};

std::vector<Tensor> random_features(int64_t n, const std::vector<LayerShape>& layers,
                                    uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.5f, 1.0f);
  std::vector<Tensor> out;
  for (const auto& l : layers) {
    Tensor t({n, l.c, l.h, l.w});
    for (float& v : t.data) v = dist(rng);
    out.push_back(std::move(t));
  }
  return out;
}

// Largest |a - b| relative to the largest |b| (the features are O(1), so this is the relative
// error that matters).
double max_rel_error(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape, b.shape);
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < std::min(a.data.size(), b.data.size()); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a.data[i] - b.data[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b.data[i])));
  }
  return diff / scale;
}

Tensor from_values(std::vector<int64_t> shape, std::vector<float> values) {
  Tensor t(std::move(shape));
  EXPECT_EQ(t.data.size(), values.size());
  t.data = std::move(values);
  return t;
}

struct Case {
  std::vector<LayerShape> layers;
  int patch_size;
  int pretrain_dim;
  int target_dim;
};

// Channel counts where C*p*p / pretrain_dim is not an integer, where it is smaller than
// pretrain_dim (bins repeat), odd grids, a deeper grid larger or equal to the first one.
const std::vector<Case> kCases = {
    {{{5, 7, 9}}, 1, 3, 2},
    {{{7, 6, 5}}, 3, 10, 17},
    {{{12, 8, 8}, {20, 4, 4}}, 3, 50, 37},
    {{{3, 9, 7}, {6, 5, 4}}, 3, 64, 40},  // L < O for both layers
    {{{11, 7, 7}, {9, 3, 3}, {13, 2, 2}}, 5, 70, 96},
    {{{6, 5, 5}, {10, 5, 5}}, 1, 7, 9},   // same grid: no resizing
    {{{4, 3, 3}, {8, 6, 7}}, 3, 23, 11},  // deeper grid larger: bilinear down-sampling
    {{{16, 11, 13}, {24, 6, 7}}, 5, 33, 64},
    {{{64, 14, 14}, {96, 7, 7}}, 3, 256, 200},  // large enough for embed() to use threads
    {{{17, 5, 6}, {33, 3, 4}}, 1, 20, 30},      // partial channel blocks, coarser grid, p = 1
    {{{18, 4, 3}, {5, 2, 2}}, 7, 40, 20},       // window wider than the grids
    // The real backbones' channel counts (WRN50, InceptionV3, MobileNetV2) on small grids.
    {{{512, 6, 6}, {1024, 3, 3}}, 3, 1024, 1024},
    {{{288, 7, 7}, {768, 3, 3}}, 3, 1024, 1024},
    {{{192, 6, 5}, {384, 3, 3}}, 3, 1024, 1024},
};

TEST(Embedding, PaperMatchesReference) {
  for (size_t i = 0; i < kCases.size(); ++i) {
    const Case& c = kCases[i];
    SCOPED_TRACE("case " + std::to_string(i));
    auto features = random_features(2, c.layers, 100 + static_cast<uint32_t>(i));
    EmbeddingParams p;
    p.patch_size = c.patch_size;
    p.pretrain_dim = c.pretrain_dim;
    p.target_dim = c.target_dim;
    Embedding fast = embed(features, p);
    Embedding ref = embed_reference(features, p);
    EXPECT_EQ(fast.grid_h, c.layers[0].h);
    EXPECT_EQ(fast.grid_w, c.layers[0].w);
    EXPECT_EQ(ref.grid_h, fast.grid_h);
    EXPECT_EQ(ref.grid_w, fast.grid_w);
    ASSERT_EQ(fast.patches.shape,
              (std::vector<int64_t>{2 * c.layers[0].h * c.layers[0].w, c.target_dim}));
    std::vector<int64_t> channels;
    for (const auto& l : c.layers) channels.push_back(l.c);
    EXPECT_EQ(embedding_dim(channels, p), c.target_dim);
    EXPECT_LT(max_rel_error(fast.patches, ref.patches), 1e-5);
  }
}

TEST(Embedding, ConcatMatchesReference) {
  for (size_t i = 0; i < kCases.size(); ++i) {
    const Case& c = kCases[i];
    SCOPED_TRACE("case " + std::to_string(i));
    auto features = random_features(2, c.layers, 200 + static_cast<uint32_t>(i));
    EmbeddingParams p;
    p.mode = EmbeddingMode::concat;
    p.patch_size = c.patch_size;
    Embedding fast = embed(features, p);
    Embedding ref = embed_reference(features, p);
    int64_t total = 0;
    std::vector<int64_t> channels;
    for (const auto& l : c.layers) {
      total += l.c;
      channels.push_back(l.c);
    }
    EXPECT_EQ(embedding_dim(channels, p), total);
    ASSERT_EQ(fast.patches.shape, (std::vector<int64_t>{2 * c.layers[0].h * c.layers[0].w, total}));
    EXPECT_LT(max_rel_error(fast.patches, ref.patches), 1e-5);
  }
}

// One channel, 2x2 grid [[1, 2], [3, 4]], p = 3, pooled to 4 then 3.
// Neighbourhood of (0, 0): [0 0 0 | 0 1 2 | 0 3 4]. Bins of 9 -> 4: {0,1,2} {2,3,4} {4,5,6}
// {6,7,8} give 0, 1/3, 1, 7/3. Bins of 4 -> 3: {0,1} {1,2} {2,3} give 1/6, 2/3, 5/3.
// Neighbourhood of (1, 1): [1 2 0 | 3 4 0 | 0 0 0] -> 1, 7/3, 4/3, 0 -> 5/3, 11/6, 2/3.
TEST(Embedding, PaperHandComputed) {
  std::vector<Tensor> f{from_values({1, 1, 2, 2}, {1, 2, 3, 4})};
  EmbeddingParams p;
  p.pretrain_dim = 4;
  p.target_dim = 3;
  for (const Embedding& e : {embed(f, p), embed_reference(f, p)}) {
    ASSERT_EQ(e.patches.shape, (std::vector<int64_t>{4, 3}));
    const float* r0 = e.patches.row(0);
    EXPECT_NEAR(r0[0], 1.0 / 6, 1e-6);
    EXPECT_NEAR(r0[1], 2.0 / 3, 1e-6);
    EXPECT_NEAR(r0[2], 5.0 / 3, 1e-6);
    const float* r3 = e.patches.row(3);
    EXPECT_NEAR(r3[0], 5.0 / 3, 1e-6);
    EXPECT_NEAR(r3[1], 11.0 / 6, 1e-6);
    EXPECT_NEAR(r3[2], 2.0 / 3, 1e-6);
  }
}

// Adaptive pooling up-samples when L < O: 2 values into 3 bins {0} {0,1} {1}.
TEST(Embedding, PoolingUpsamplesLikeTorch) {
  std::vector<Tensor> f{from_values({1, 2, 1, 1}, {2, 6})};
  EmbeddingParams p;
  p.patch_size = 1;
  p.pretrain_dim = 3;
  p.target_dim = 3;
  for (const Embedding& e : {embed(f, p), embed_reference(f, p)}) {
    ASSERT_EQ(e.patches.shape, (std::vector<int64_t>{1, 3}));
    EXPECT_FLOAT_EQ(e.patches.data[0], 2);
    EXPECT_FLOAT_EQ(e.patches.data[1], 4);
    EXPECT_FLOAT_EQ(e.patches.data[2], 6);
  }
}

// Deeper layer [[0, 4], [8, 12]] resized 2x2 -> 4x4 (torch bilinear, align_corners = false):
// per axis the weights are in0, 3/4 in0 + 1/4 in1, 1/4 in0 + 3/4 in1, in1.
TEST(Embedding, ConcatBilinearHandComputed) {
  std::vector<Tensor> f{Tensor({1, 1, 4, 4}), from_values({1, 1, 2, 2}, {0, 4, 8, 12})};
  EmbeddingParams p;
  p.mode = EmbeddingMode::concat;
  p.patch_size = 1;
  const float expected[16] = {0, 1, 3, 4, 2, 3, 5, 6, 6, 7, 9, 10, 8, 9, 11, 12};
  for (const Embedding& e : {embed(f, p), embed_reference(f, p)}) {
    ASSERT_EQ(e.patches.shape, (std::vector<int64_t>{16, 2}));
    for (int i = 0; i < 16; ++i) {
      EXPECT_FLOAT_EQ(e.patches.row(i)[0], 0);
      EXPECT_FLOAT_EQ(e.patches.row(i)[1], expected[i]) << i;
    }
  }
}

// 3x3 average with zero padding counted: on a 2x2 grid every window holds all four values.
TEST(Embedding, ConcatAverageCountsPadding) {
  std::vector<Tensor> f{from_values({1, 1, 2, 2}, {1, 2, 3, 4})};
  EmbeddingParams p;
  p.mode = EmbeddingMode::concat;
  for (const Embedding& e : {embed(f, p), embed_reference(f, p)})
    for (float v : e.patches.data) EXPECT_FLOAT_EQ(v, 10.0f / 9);
}

TEST(Embedding, RowsAreImageMajor) {
  auto f = random_features(2, {{4, 3, 5}}, 7);
  EmbeddingParams p;
  p.pretrain_dim = 8;
  p.target_dim = 8;
  Embedding both = embed(f, p);
  Tensor second({1, 4, 3, 5});
  std::copy(f[0].data.begin() + 60, f[0].data.end(), second.data.begin());
  Embedding one = embed({second}, p);
  ASSERT_EQ(one.patches.numel() * 2, both.patches.numel());
  for (int64_t i = 0; i < one.patches.numel(); ++i)
    EXPECT_FLOAT_EQ(one.patches.data[i], both.patches.data[one.patches.numel() + i]);
}

TEST(Embedding, Dims) {
  EmbeddingParams p;
  EXPECT_EQ(embedding_dim({512, 1024}, p), 1024);
  EXPECT_EQ(embedding_dim({288, 768}, p), 1024);
  p.target_dim = 384;
  EXPECT_EQ(embedding_dim({192, 384}, p), 384);
  p.mode = EmbeddingMode::concat;
  EXPECT_EQ(embedding_dim({512, 1024}, p), 1536);
  EXPECT_EQ(embedding_dim({192, 384}, p), 576);
}

TEST(Embedding, RejectsBadParameters) {
  auto f = random_features(1, {{2, 3, 3}}, 1);
  EmbeddingParams p;
  p.patch_size = 2;
  EXPECT_THROW(embed(f, p), Error);
  p.patch_size = 3;
  p.pretrain_dim = 0;
  EXPECT_THROW(embed(f, p), Error);
  EXPECT_THROW(embedding_dim({}, EmbeddingParams{}), Error);
  // Layers from different batches are a bug in the caller.
  auto g = random_features(1, {{2, 3, 3}}, 1);
  g.push_back(random_features(2, {{2, 2, 2}}, 2)[0]);
  EXPECT_THROW(embed(g, EmbeddingParams{}), Error);
}

}  // namespace
}  // namespace patchcore
