// Loading any image as 8-bit RGB and turning it into a normalised network input.
#pragma once

#include <filesystem>
#include <opencv2/core.hpp>
#include <string>

namespace patchcore {

/// Input normalisation a backbone was trained with (part of the backbone's description).
enum class Normalization {
  imagenet,  ///< x/255, minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225)
  m11,       ///< x/127.5 - 1 (Keras)
  unit,      ///< x/255
};
const char* to_string(Normalization n);
/// Throws Error(usage) on an unknown name.
Normalization normalization_from_string(const std::string& name);

/// Loads a file as CV_8UC3 in RGB order. Grey is replicated, alpha is dropped, 16-bit is scaled
/// to 8-bit (/257), float images are taken as [0, 1]. EXIF orientation is ignored (as PIL and
/// the reference do). Throws Error(bad_input) naming the file when it is missing, not an image, or
/// truncated (a JPEG without its end marker, a PNG without IEND).
cv::Mat load_rgb(const std::filesystem::path& file);

/// Loads a ground-truth mask, resizes it (nearest) to size x size (size <= 0: keeps the file's
/// size, e.g. to apply preprocess_mask's crop geometry) and returns CV_8UC1 0/1 (pixels >= 128
/// are defect; in a colour mask a pixel is defect when any colour channel is). Throws
/// Error(bad_input) naming the file.
cv::Mat load_mask(const std::filesystem::path& file, int size);

struct Preprocess {
  int image_size = 224;  ///< resize to S x S (crop == 0) or shorter side to S (crop > 0)
  int crop = 0;          ///< centre crop C x C after the resize; 0: none
  Normalization normalization = Normalization::m11;
  /// Side of the network input: crop when set, else image_size.
  int input_size() const { return crop > 0 ? crop : image_size; }
};

/// Resizes (bilinear), crops, normalises and writes one image as planar CHW floats to dst,
/// which must hold 3 * input_size()^2 floats. With a crop the geometry is torchvision's
/// Resize(S) + CenterCrop(C): longer side int(S * long / short), offsets round-half-even.
/// Throws Error(usage) when image_size <= 0, crop < 0 or crop > image_size.
void preprocess_into(const cv::Mat& rgb, const Preprocess& p, float* dst);

/// The same geometry applied to a mask (nearest neighbour), for pixel metrics: returns
/// input_size() x input_size() CV_8UC1 0/1.
cv::Mat preprocess_mask(const cv::Mat& mask01, const Preprocess& p);

}  // namespace patchcore
