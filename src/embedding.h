// From backbone feature maps to one feature vector per patch (design.md §1, steps 3-6).
#pragma once

#include <vector>

#include "patchcore/patchcore.h"
#include "tensor.h"

namespace patchcore {

struct EmbeddingParams {
  EmbeddingMode mode = EmbeddingMode::paper;
  int patch_size = 3;
  int pretrain_dim = 1024;
  int target_dim = 1024;
};

struct Embedding {
  Tensor patches;  ///< [N * h * w, D]; rows image-major, then y, then x
  int grid_h = 0;  ///< grid of the first (shallowest) layer
  int grid_w = 0;
};

/// Dimension D of the patch vectors for layers with these channel counts.
int embedding_dim(const std::vector<int64_t>& channels, const EmbeddingParams& p);

/// features: one [N, C_l, h_l, w_l] tensor per layer, shallow to deep; the first layer's grid is
/// the patch grid.
///
/// paper: each position's p x p neighbourhood (zero padding) flattened channel-major (index
/// c*p*p + ky*p + kx); deeper layers bilinearly resized (align_corners = false) to the first
/// grid; each layer's vector adaptive-average-pooled to pretrain_dim (bin i covers
/// [floor(i*L/O), ceil((i+1)*L/O))); the layers concatenated and pooled again to target_dim.
/// Computed without materialising the neighbourhoods: pooling and resizing are linear, so each
/// output channel is a weighted sum of shifted input channels, and pooling before resizing
/// gives the same result on far fewer channels.
///
/// concat: each layer p x p average pooled (stride 1, zero padding counted, as torch's
/// avg_pool2d), deeper layers bilinearly resized to the first grid, channels concatenated.
///
/// Throws Error(usage) for an even or non-positive patch size or dims < 1; layers that are not
/// [N, C, h, w] with one N are a caller bug (internal error). Runs on the caller's OpenMP
/// thread count (omp_get_max_threads()), over images and blocks of output channels.
Embedding embed(const std::vector<Tensor>& features, const EmbeddingParams& p);

/// Where embed() puts its result: rows (N * h * w) of dim floats, on a grid_h x grid_w grid.
struct EmbeddingLayout {
  int64_t rows = 0;
  int64_t dim = 0;
  int grid_h = 0;
  int grid_w = 0;
};
EmbeddingLayout embedding_layout(const std::vector<Tensor>& features, const EmbeddingParams& p);

/// embed() into the caller's memory: out holds embedding_layout().rows * dim floats (a slice of
/// the memory bank during fit, which saves a copy and a fresh buffer per batch).
void embed_into(const std::vector<Tensor>& features, const EmbeddingParams& p, float* out);

/// The same, computed literally (explicit neighbourhoods, resize, then pooling): slow, the
/// yardstick for embed() in tests.
Embedding embed_reference(const std::vector<Tensor>& features, const EmbeddingParams& p);

}  // namespace patchcore
