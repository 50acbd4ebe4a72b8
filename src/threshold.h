// Turning raw scores into decisions: threshold and normalisation stored with the model.
#pragma once

#include <vector>

#include "patchcore/patchcore.h"

namespace patchcore {

/// From scores of held-out normal images only (the usual case on a production line): the
/// image threshold sits above every held-out score by a margin of the held-out spread (so that
/// a normal image is rarely flagged); the pixel threshold likewise from the held-out maps'
/// pixels; min/max from the held-out scores and the threshold.
///
/// The rule, with m the mean, s the sample standard deviation and M the maximum of the scores:
///
///   threshold = max(m + 3 s, M + s)
///
/// m + 3 s is the classic control limit (about 1 normal image in 700 flagged if the scores were
/// Gaussian); M + s keeps every held-out image below the threshold by a margin even when a few
/// held-out scores form a long tail. When s is unknown or zero (one score, or all equal) it is
/// taken as 10% of |m|, since scores are distances whose scale is their size; if m is 0 too the
/// threshold is the smallest double above M. The pixel threshold applies the same rule to all
/// held-out pixel scores; with no pixel score it is the image threshold (an image score is the
/// peak of its map, so both live on the same scale).
///
/// Normalisation (see normalize_score): min_score = the lowest held-out score and max_score =
/// 2 threshold - min_score, so the lowest normal image maps to 0, the threshold to 0.5, and a
/// score as far above the threshold as the lowest normal one lies below it maps to 1.
/// source = "holdout". Throws Error(usage) when image_scores is empty or a score is not finite.
Calibration calibrate_from_normal(const std::vector<float>& image_scores,
                                  const std::vector<float>& pixel_scores);

/// With labels (eval): the F1-optimal image threshold (and pixel threshold when masks exist);
/// min/max from all scores.
///
/// Precisely: image_threshold = best_f1(image_scores, labels).threshold; pixel_threshold =
/// best_f1 over the pixels when pixel_labels is non-empty and holds both classes, otherwise the
/// image threshold (the same scale, see above). min_score/max_score = the lowest/highest image
/// score (as anomalib normalises). source = "f1". When no image is anomalous there is nothing
/// to optimise: the result is calibrate_from_normal(image_scores, pixel_scores) with source
/// "holdout". Throws Error(usage) when image_scores is empty, when sizes differ (pixel_labels
/// may be empty) or a score is not finite.
Calibration calibrate_from_labels(const std::vector<float>& image_scores,
                                  const std::vector<uint8_t>& labels,
                                  const std::vector<float>& pixel_scores,
                                  const std::vector<uint8_t>& pixel_labels);

}  // namespace patchcore
