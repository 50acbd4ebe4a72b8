// Turning raw scores into decisions: threshold and normalisation stored with the model.
#pragma once

#include <vector>

#include "patchcore/patchcore.h"

namespace patchcore {

/// From scores of held-out normal images only (the usual case on a production line): the
/// image threshold sits above every held-out score by a margin of the held-out spread (so that
/// a normal image is rarely flagged); the pixel threshold likewise from the held-out maps'
/// pixels; min/max from the held-out scores and the threshold.
Calibration calibrate_from_normal(const std::vector<float>& image_scores,
                                  const std::vector<float>& pixel_scores);

/// With labels (eval): the F1-optimal image threshold (and pixel threshold when masks exist);
/// min/max from all scores.
Calibration calibrate_from_labels(const std::vector<float>& image_scores,
                                  const std::vector<uint8_t>& labels,
                                  const std::vector<float>& pixel_scores,
                                  const std::vector<uint8_t>& pixel_labels);

}  // namespace patchcore
