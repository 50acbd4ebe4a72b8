// Pictures of a prediction: a heatmap blended over the image, the predicted region outlined,
// and a plain mask.
#pragma once

#include <opencv2/core.hpp>

#include "image.h"
#include "patchcore/patchcore.h"

namespace patchcore {

/// The S x S anomaly map mapped back onto the original image's pixels (CV_32F, rows x cols of
/// the image): resized bilinearly, or placed over the centre crop region when the model crops
/// (outside the crop: the map's minimum).
cv::Mat map_to_image(const AnomalyMap& map, const cv::Size& image_size, const Preprocess& pre);

/// Jet heatmap of the pixel scores (normalised with the calibration: pixel threshold -> middle
/// of the colour scale) blended over the RGB image, with the region at or above the pixel
/// threshold outlined in white. Returns BGR, ready for cv::imwrite.
cv::Mat heatmap_overlay(const cv::Mat& rgb, const cv::Mat& image_map, const Calibration& c);

/// 0/255 mask of the pixels at or above the pixel threshold.
cv::Mat predicted_mask(const cv::Mat& image_map, const Calibration& c);

}  // namespace patchcore
