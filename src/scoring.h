// From nearest-neighbour distances to an image score and an anomaly map.
#pragma once

#include <cstdint>
#include <vector>

#include "knn.h"
#include "patchcore/patchcore.h"

namespace patchcore {

struct ScoringParams {
  int k = 1;                ///< patch score = mean of the k nearest distances
  bool squared_l2 = false;  ///< distances as squared L2 instead of L2
  bool reweight = false;    ///< Eq. 7
  int reweight_b = 9;
};

struct ImageScores {
  std::vector<float> patch;  ///< [h * w] patch scores on the grid
  double score = 0;          ///< image score
};

/// Scores the patches of one image (patches [h * w, D]) against the bank: patch score from the
/// k nearest bank rows, image score = max patch score, optionally re-weighted by Eq. 7 (design
/// .md §1 step 9). Eq. 7: t* = the first patch with the largest score, m* = its nearest bank row,
/// N_b = the min(b, bank size) nearest bank rows of m* (m* itself always included); with plain
/// L2 distances d computed directly (whatever squared_l2 says),
///   score = (1 - exp(d(t*, m*)) / sum_{m in N_b} exp(d(t*, m))) * s*,
/// where s* is t*'s patch score in the chosen kind (squared L2 or L2, mean over k), so with
/// k = 1 and L2 it is the paper's d(t*, m*). Throws Error(usage) unless 1 <= k <= bank size and
/// b >= 1.
ImageScores score_patches(const NearestNeighbors& nn, const float* patches, int64_t n_patches,
                          const ScoringParams& p);

struct MapParams {
  Upsample upsample = Upsample::bilinear;
  double sigma = 4.0;  ///< Gaussian blur; kernel size 2 * round(4 * sigma) + 1 (33 for 4); 0: none
  bool reflect101 = false;  ///< border BORDER_REFLECT_101 (anomalib) instead of BORDER_REFLECT
};

/// Upsamples the h x w grid to size x size and blurs it with a separable Gaussian (scipy's
/// gaussian_filter with truncate 4: weights exp(-x^2 / 2 sigma^2) normalised, 2 * round(4 sigma)
/// + 1 taps; border REFLECT = scipy 'reflect', or REFLECT_101 = torch/kornia 'reflect').
/// bilinear: torch's F.interpolate rule (align_corners = false, no antialias). nearest: source
/// floor(dst * in / size) in exact integer arithmetic (torch's float scale can differ by one
/// pixel in rare exact-integer cases). Throws Error(usage) on a bad grid, size or sigma.
AnomalyMap anomaly_map(const std::vector<float>& patch, int h, int w, int size, const MapParams& p);

/// The same with a naive 2-D convolution: the yardstick for anomaly_map() in tests.
AnomalyMap anomaly_map_reference(const std::vector<float>& patch, int h, int w, int size,
                                 const MapParams& p);

}  // namespace patchcore
