// The public pictures of a prediction, and writing an image: RGB Images around overlay.h.
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "error.h"
#include "image.h"
#include "overlay.h"
#include "patchcore/patchcore.h"

namespace fs = std::filesystem;

namespace patchcore {
namespace {

Image to_image(const cv::Mat& m, const std::string& name) {
  PATCHCORE_ASSERT(m.type() == CV_8UC3 || m.type() == CV_8UC1);
  const cv::Mat packed = m.isContinuous() ? m : m.clone();
  Image out;
  out.height = m.rows;
  out.width = m.cols;
  out.channels = m.channels();
  out.name = name;
  out.pixels.assign(packed.data, packed.data + packed.total() * packed.elemSize());
  return out;
}

// The prediction's map at its image's size, as a header over `values`.
cv::Mat image_map_mat(const Model& model, const Prediction& p, AnomalyMap& values) {
  values = model.image_map(p);
  return cv::Mat(values.height, values.width, CV_32F, values.values.data());
}

}  // namespace

void write_image(const fs::path& file, const ImageView& image) {
  check_view(image);
  const int type = image.channels == 1 ? CV_8UC1 : image.channels == 3 ? CV_8UC3 : CV_8UC4;
  const size_t stride = image.stride > 0 ? static_cast<size_t>(image.stride)
                                         : static_cast<size_t>(image.width) * image.channels;
  const cv::Mat view(image.height, image.width, type, const_cast<uint8_t*>(image.data), stride);
  cv::Mat bgr;
  if (image.channels == 3) {
    cv::cvtColor(view, bgr, cv::COLOR_RGB2BGR);
  } else if (image.channels == 4) {
    cv::cvtColor(view, bgr, cv::COLOR_RGBA2BGRA);
  } else {
    bgr = view;
  }
  write_bgr(file, bgr);
}

Image heatmap_overlay(const Model& model, const Prediction& p, const ImageView& image) {
  AnomalyMap values;
  const cv::Mat map = image_map_mat(model, p, values);
  if (image.height != p.image_height || image.width != p.image_width)
    throw_usage("heatmap_overlay: the image (" + std::to_string(image.height) + " x " +
                std::to_string(image.width) + ") is not the one predicted (" +
                std::to_string(p.image_height) + " x " + std::to_string(p.image_width) + ")");
  const cv::Mat bgr = heatmap_overlay(view_rgb(image), map, model.calibration());
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return to_image(rgb, image.name);
}

Image predicted_mask(const Model& model, const Prediction& p) {
  AnomalyMap values;
  const cv::Mat map = image_map_mat(model, p, values);
  return to_image(predicted_mask(map, model.calibration()), p.path.string());
}

}  // namespace patchcore
