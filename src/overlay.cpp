#include "overlay.h"

#include <algorithm>
#include <cmath>
#include <opencv2/imgproc.hpp>

namespace patchcore {

cv::Mat map_to_image(const AnomalyMap& map, const cv::Size& image_size, const Preprocess& pre) {
  cv::Mat m(map.height, map.width, CV_32F, const_cast<float*>(map.values.data()));
  cv::Mat out;
  if (pre.crop <= 0) {
    // The pad mode's border holds no image: only the content rectangle is mapped back.
    cv::resize(m(content_rect(image_size, pre)), out, image_size, 0, 0, cv::INTER_LINEAR);
    return out;
  }
  // The crop is C x C pixels of the image resized so that its shorter side is S.
  const double scale =
      static_cast<double>(pre.image_size) / std::min(image_size.width, image_size.height);
  const int side = std::max(1, static_cast<int>(std::lround(pre.crop / scale)));
  double lo = 0, hi = 0;
  cv::minMaxLoc(m, &lo, &hi);
  out = cv::Mat(image_size, CV_32F, cv::Scalar(lo));
  cv::Rect box((image_size.width - side) / 2, (image_size.height - side) / 2, side, side);
  box &= cv::Rect(0, 0, image_size.width, image_size.height);
  cv::Mat region;
  cv::resize(m, region, box.size(), 0, 0, cv::INTER_LINEAR);
  region.copyTo(out(box));
  return out;
}

HeatScale heat_scale(const Calibration& c) {
  double half = (c.max_score - c.min_score) / 2;
  if (!(half > 0) || !std::isfinite(half)) half = 0;
  return {c.pixel_threshold - half, c.pixel_threshold, c.pixel_threshold + half};
}

cv::Mat heatmap_overlay(const cv::Mat& rgb, const cv::Mat& image_map, const Calibration& c) {
  return heatmap_overlay(rgb, image_map, c, heat_scale(c));
}

cv::Mat heatmap_overlay(const cv::Mat& rgb, const cv::Mat& image_map, const Calibration& c,
                        const HeatScale& s) {
  const double below = s.threshold - s.lo, above = s.hi - s.threshold;
  auto level = [&](double v) {
    if (v < s.threshold)
      return below > 0 ? std::max(0.0, 0.5 - 0.5 * (s.threshold - v) / below) : 0.0;
    if (v > s.threshold)
      return above > 0 ? std::min(1.0, 0.5 + 0.5 * (v - s.threshold) / above) : 1.0;
    return 0.5;
  };
  cv::Mat norm(image_map.size(), CV_8U);
  for (int y = 0; y < image_map.rows; ++y)
    for (int x = 0; x < image_map.cols; ++x)
      norm.at<uchar>(y, x) = cv::saturate_cast<uchar>(255.0 * level(image_map.at<float>(y, x)));
  cv::Mat colour, bgr, out;
  cv::applyColorMap(norm, colour, cv::COLORMAP_JET);
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  cv::addWeighted(bgr, 0.55, colour, 0.45, 0, out);
  std::vector<std::vector<cv::Point>> contours;
  cv::findContours(predicted_mask(image_map, c), contours, cv::RETR_EXTERNAL,
                   cv::CHAIN_APPROX_SIMPLE);
  const int thickness = std::max(1, std::min(out.rows, out.cols) / 200);
  cv::drawContours(out, contours, -1, cv::Scalar(255, 255, 255), thickness, cv::LINE_AA);
  return out;
}

cv::Mat predicted_mask(const cv::Mat& image_map, const Calibration& c) {
  cv::Mat mask;
  cv::compare(image_map, c.pixel_threshold, mask, cv::CMP_GE);
  return mask;
}

}  // namespace patchcore
