// Heatmap overlays and masks against plain per-pixel expectations.
#include <gtest/gtest.h>

#include <opencv2/imgproc.hpp>

#include "overlay.h"

namespace {

patchcore::Calibration calibration() {
  patchcore::Calibration c;
  c.image_threshold = 5;
  c.pixel_threshold = 5;
  c.min_score = 1;
  c.max_score = 9;
  return c;
}

// A 40 x 40 map: 1 everywhere, 9 in the square [10, 20) x [10, 20).
cv::Mat square_map() {
  cv::Mat m(40, 40, CV_32F, cv::Scalar(1.0f));
  m(cv::Rect(10, 10, 10, 10)).setTo(9.0f);
  return m;
}

TEST(Overlay, PredictedMaskIsThePixelsAtOrAboveThePixelThreshold) {
  cv::Mat m(7, 9, CV_32F);
  for (int y = 0; y < m.rows; ++y)
    for (int x = 0; x < m.cols; ++x) m.at<float>(y, x) = static_cast<float>(x + y) * 0.75f;
  const cv::Mat mask = patchcore::predicted_mask(m, calibration());
  ASSERT_EQ(mask.type(), CV_8UC1);
  ASSERT_EQ(mask.size(), m.size());
  for (int y = 0; y < m.rows; ++y)
    for (int x = 0; x < m.cols; ++x)
      EXPECT_EQ(mask.at<uchar>(y, x), m.at<float>(y, x) >= 5.0f ? 255 : 0) << x << "," << y;
}

TEST(Overlay, HeatIsRedOverTheDefectBlueElsewhereAndTheRegionIsOutlined) {
  const cv::Mat rgb(40, 40, CV_8UC3, cv::Scalar(128, 128, 128));
  const cv::Mat out = patchcore::heatmap_overlay(rgb, square_map(), calibration());
  ASSERT_EQ(out.type(), CV_8UC3);
  ASSERT_EQ(out.size(), rgb.size());
  const cv::Vec3b inside = out.at<cv::Vec3b>(15, 15), outside = out.at<cv::Vec3b>(32, 32);
  EXPECT_GT(inside[2], inside[0] + 40);    // BGR: red over the high scores
  EXPECT_GT(outside[0], outside[2] + 40);  // blue over the low ones
  // The outline sits on the region's border and is white.
  const cv::Vec3b edge = out.at<cv::Vec3b>(10, 15);
  EXPECT_GT(edge[0], 200);
  EXPECT_GT(edge[1], 200);
  EXPECT_GT(edge[2], 200);
  // The image shows through: a brighter image gives a brighter overlay away from the outline.
  const cv::Mat bright(40, 40, CV_8UC3, cv::Scalar(250, 250, 250));
  const cv::Vec3b b =
      patchcore::heatmap_overlay(bright, square_map(), calibration()).at<cv::Vec3b>(32, 32);
  EXPECT_GT(b[1], outside[1]);
}

TEST(Overlay, ScaleIsLinearOnEachSideOfTheThresholdAndDefaultsToTheCalibration) {
  const cv::Mat black(1, 7, CV_8UC3, cv::Scalar(0, 0, 0));
  cv::Mat map(1, 7, CV_32F);
  const float values[7] = {-3, 0, 1, 2, 6, 10, 20};  // scale 0 .. 2 .. 10, clipped outside
  for (int i = 0; i < 7; ++i) map.at<float>(0, i) = values[i];
  patchcore::Calibration c = calibration();
  c.pixel_threshold = 100;  // no outline: the colours alone
  const cv::Mat out = patchcore::heatmap_overlay(black, map, c, {0, 2, 10});
  cv::Mat levels(1, 7, CV_8U), jet;
  const uchar expected[7] = {0, 0, 64, 128, 191, 255, 255};  // 255 * {0, 0, .25, .5, .75, 1, 1}
  for (int i = 0; i < 7; ++i) levels.at<uchar>(0, i) = expected[i];
  cv::applyColorMap(levels, jet, cv::COLORMAP_JET);
  for (int i = 0; i < 7; ++i)
    for (int ch = 0; ch < 3; ++ch)
      EXPECT_NEAR(out.at<cv::Vec3b>(0, i)[ch], 0.45 * jet.at<cv::Vec3b>(0, i)[ch], 1.0)
          << "pixel " << i << " channel " << ch;

  const patchcore::HeatScale s = patchcore::heat_scale(calibration());  // range 1 .. 9
  EXPECT_DOUBLE_EQ(s.lo, 1);
  EXPECT_DOUBLE_EQ(s.threshold, 5);
  EXPECT_DOUBLE_EQ(s.hi, 9);
  const cv::Mat grey(40, 40, CV_8UC3, cv::Scalar(90, 120, 150));
  EXPECT_EQ(
      cv::norm(patchcore::heatmap_overlay(grey, square_map(), calibration()),
               patchcore::heatmap_overlay(grey, square_map(), calibration(), s), cv::NORM_INF),
      0.0);
}

TEST(Overlay, NothingIsOutlinedWhenNoPixelReachesTheThreshold) {
  const cv::Mat rgb(30, 30, CV_8UC3, cv::Scalar(0, 0, 0));
  const cv::Mat map(30, 30, CV_32F, cv::Scalar(2.0f));
  const cv::Mat out = patchcore::heatmap_overlay(rgb, map, calibration());
  double lo = 0, hi = 0;
  cv::Mat grey;
  cv::extractChannel(out, grey, 1);
  cv::minMaxLoc(grey, &lo, &hi);
  EXPECT_EQ(lo, hi);  // one uniform colour, no white line
  EXPECT_EQ(cv::countNonZero(patchcore::predicted_mask(map, calibration())), 0);
}

TEST(Overlay, MapToImageResizesOrPlacesTheCropInTheCentre) {
  patchcore::AnomalyMap map{4, 4, std::vector<float>(16, 3.0f)};
  map.values[0] = 1.0f;  // the minimum, used outside the crop
  patchcore::Preprocess plain{4, 0, patchcore::Normalization::m11};
  const cv::Mat resized = patchcore::map_to_image(map, cv::Size(8, 6), plain);
  EXPECT_EQ(resized.size(), cv::Size(8, 6));
  EXPECT_EQ(resized.type(), CV_32F);
  EXPECT_FLOAT_EQ(resized.at<float>(5, 7), 3.0f);

  // Resize the shorter side (100) to 8, crop 4: the crop covers the central 50 x 50 pixels.
  patchcore::Preprocess crop{8, 4, patchcore::Normalization::m11};
  const cv::Mat placed = patchcore::map_to_image(map, cv::Size(200, 100), crop);
  ASSERT_EQ(placed.size(), cv::Size(200, 100));
  EXPECT_FLOAT_EQ(placed.at<float>(0, 0), 1.0f);  // outside the crop
  EXPECT_FLOAT_EQ(placed.at<float>(50, 10), 1.0f);
  EXPECT_FLOAT_EQ(placed.at<float>(60, 110), 3.0f);  // inside, away from the corner value
  EXPECT_FLOAT_EQ(placed.at<float>(50, 70), 1.0f);   // just left of the crop
  EXPECT_FLOAT_EQ(placed.at<float>(60, 120), 3.0f);
}

TEST(Overlay, MapToImageLeavesThePadOut) {
  // A 200 x 100 image padded into 8 x 8 fills rows 2..5; the pad rows hold a huge score that
  // must not reach the image.
  patchcore::AnomalyMap map{8, 8, std::vector<float>(64, 100.0f)};
  for (int y = 2; y < 6; ++y)
    for (int x = 0; x < 8; ++x) map.values[static_cast<size_t>(y * 8 + x)] = static_cast<float>(x);
  patchcore::Preprocess pad{8, 0, patchcore::Normalization::m11, patchcore::Resize::pad};
  const cv::Mat on_image = patchcore::map_to_image(map, cv::Size(200, 100), pad);
  ASSERT_EQ(on_image.size(), cv::Size(200, 100));
  double lo = 0, hi = 0;
  cv::minMaxLoc(on_image, &lo, &hi);
  EXPECT_FLOAT_EQ(static_cast<float>(lo), 0.0f);
  EXPECT_FLOAT_EQ(static_cast<float>(hi), 7.0f);
  // Left to right as in the map, the same in every row.
  EXPECT_LT(on_image.at<float>(0, 20), on_image.at<float>(0, 180));
  EXPECT_FLOAT_EQ(on_image.at<float>(0, 100), on_image.at<float>(99, 100));
}

}  // namespace
