// Pictures of a prediction: a heatmap blended over the image, the predicted region outlined,
// and a plain mask.
#pragma once

#include <opencv2/core.hpp>

#include "image.h"
#include "patchcore/patchcore.h"

namespace patchcore {

/// The S x S anomaly map mapped back onto the original image's pixels (CV_32F, rows x cols of
/// the image): resized bilinearly (in pad mode only the image's rectangle of the map), or placed
/// over the centre crop region when the model crops (outside the crop: the map's minimum).
cv::Mat map_to_image(const AnomalyMap& map, const cv::Size& image_size, const Preprocess& pre);

/// The colour scale of a heatmap: lo -> blue, threshold -> the middle of the jet scale, hi ->
/// red; linear on each side of the threshold, clipped outside [lo, hi].
struct HeatScale {
  double lo = 0;
  double threshold = 0.5;
  double hi = 1;
};

/// The calibration's scale (as normalize_score maps scores): the pixel threshold in the middle,
/// lo/hi half the min..max score range below/above it. A zero range gives a two-colour map.
HeatScale heat_scale(const Calibration& c);

/// Jet heatmap of the pixel scores blended over the RGB image, with the region at or above the
/// pixel threshold (c.pixel_threshold) outlined in white. Returns BGR, ready for cv::imwrite.
/// Without a scale the calibration's heat_scale(c) colours it (predict); eval passes a scale
/// spanning the test set's pixel scores, so that the map's shape below the threshold shows.
cv::Mat heatmap_overlay(const cv::Mat& rgb, const cv::Mat& image_map, const Calibration& c);
cv::Mat heatmap_overlay(const cv::Mat& rgb, const cv::Mat& image_map, const Calibration& c,
                        const HeatScale& scale);

/// 0/255 mask of the pixels at or above the pixel threshold.
cv::Mat predicted_mask(const cv::Mat& image_map, const Calibration& c);

}  // namespace patchcore
