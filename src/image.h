// Loading any image as 8-bit RGB and turning it into a normalised network input.
#pragma once

#include <filesystem>
#include <opencv2/core.hpp>
#include <string>

#include "patchcore/patchcore.h"

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
// to_string / *_from_string of Resize and Intensity: in the public header.

/// Loads a file as CV_8UC3 in RGB order. Grey is replicated, alpha is dropped, 16-bit is scaled
/// to 8-bit (/257), float images are taken as [0, 1]. EXIF orientation is ignored (as PIL and
/// the reference do). Throws Error(bad_input) naming the file when it is missing, not an image, or
/// truncated (a JPEG without its end marker, a PNG without IEND).
cv::Mat load_rgb(const std::filesystem::path& file);
/// The same from encoded bytes (decode_image() of the public API), `name` in the messages.
cv::Mat decode_rgb(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels);
/// Writes a BGR(A) or grey image in the format its extension names, creating the folder. Throws
/// Error(bad_input) naming the file when it cannot be written.
void write_bgr(const std::filesystem::path& file, const cv::Mat& bgr);
/// Throws Error(bad_input) naming the view when its size, channels, stride or data pointer are
/// invalid.
void check_view(const ImageView& view);
/// The caller's pixels as a CV_8UC3 RGB copy, after check_view().
cv::Mat view_rgb(const ImageView& view);

/// Loads a ground-truth mask, resizes it (nearest) to size x size (size <= 0: keeps the file's
/// size, e.g. to apply preprocess_mask's crop geometry) and returns CV_8UC1 0/1 (pixels >= 128
/// are defect; in a colour mask a pixel is defect when any colour channel is). Throws
/// Error(bad_input) naming the file.
cv::Mat load_mask(const std::filesystem::path& file, int size);

struct Preprocess {
  int image_size = 224;  ///< resize to S x S (crop == 0) or shorter side to S (crop > 0)
  int crop = 0;          ///< centre crop C x C after the resize; 0: none
  Normalization normalization = Normalization::m11;
  Resize resize = Resize::squash;  ///< pad/fixed: aspect kept, centred, padded (no crop allowed)
  double scale = 0;                ///< Resize::fixed: the common factor (> 0)
  /// standardize: per image and channel, an affine map of the 8-bit values (clamped to 0-255)
  /// that gives the image's pixels (the pad excluded) ImageNet's mean and standard deviation,
  /// 255 * (0.485, 0.456, 0.406) and 255 * (0.229, 0.224, 0.225); a standard deviation below
  /// one grey level counts as one. Removes exposure and contrast differences between images.
  Intensity intensity = Intensity::keep;  ///< automatic is rejected: fit resolves it first
  /// Side of the network input: crop when set, else image_size.
  int input_size() const { return crop > 0 ? crop : image_size; }
};

/// The geometry and normalisation of a fitted model's parameters (image_size and normalization
/// resolved, as Model::params() holds them).
Preprocess preprocess_for(const Params& p);

/// Resizes (bilinear), crops, normalises and writes one image as planar CHW floats to dst,
/// which must hold 3 * input_size()^2 floats. With a crop the geometry is torchvision's
/// Resize(S) + CenterCrop(C): longer side int(S * long / short), offsets round-half-even.
/// Resize::pad scales by S / longer side (each side rounded, at least 1 pixel), centres the
/// image (extra pixel right / bottom) and pads with the colour the normalisation maps to zero
/// (the ImageNet mean, mid grey for m11, black for unit), so that the pad looks like nothing.
/// Resize::fixed does the same with the factor min(scale, S / longer side).
/// Throws Error(usage) when image_size <= 0, crop < 0, crop > image_size, pad or fixed with a
/// crop, fixed without a positive scale, or an unresolved (automatic) intensity.
void preprocess_into(const cv::Mat& rgb, const Preprocess& p, float* dst);

/// Where an image of this size lands in the network input: the pad mode's centred rectangle,
/// else the whole input.
cv::Rect content_rect(const cv::Size& image, const Preprocess& p);

/// The same geometry applied to a mask (nearest neighbour, pad 0), for pixel metrics: returns
/// input_size() x input_size() CV_8UC1 0/1.
cv::Mat preprocess_mask(const cv::Mat& mask01, const Preprocess& p);

}  // namespace patchcore
