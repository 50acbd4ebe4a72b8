#include "image.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <span>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <system_error>
#include <vector>

#include "error.h"
#include "file_io.h"

namespace fs = std::filesystem;

namespace patchcore {

const char* to_string(Normalization n) {
  switch (n) {
    case Normalization::imagenet:
      return "imagenet";
    case Normalization::m11:
      return "m11";
    case Normalization::unit:
      return "unit";
  }
  PATCHCORE_ASSERT(false && "unknown Normalization");
  return "";
}

Normalization normalization_from_string(const std::string& name) {
  if (name == "imagenet") return Normalization::imagenet;
  if (name == "m11") return Normalization::m11;
  if (name == "unit") return Normalization::unit;
  throw_usage("unknown normalization '" + name + "' (expected imagenet, m11 or unit)");
}

const char* to_string(Resize r) {
  switch (r) {
    case Resize::squash:
      return "squash";
    case Resize::pad:
      return "pad";
    case Resize::fixed:
      return "fixed";
  }
  return "?";
}

const char* to_string(Intensity i) {
  switch (i) {
    case Intensity::keep:
      return "keep";
    case Intensity::standardize:
      return "standardize";
    case Intensity::automatic:
      return "auto";
  }
  return "?";
}

Intensity intensity_from_string(const std::string& name) {
  if (name == "keep") return Intensity::keep;
  if (name == "standardize") return Intensity::standardize;
  if (name == "auto") return Intensity::automatic;
  throw_usage("unknown intensity '" + name + "' (expected auto, keep or standardize)");
}

Resize resize_from_string(const std::string& name) {
  if (name == "squash") return Resize::squash;
  if (name == "pad") return Resize::pad;
  if (name == "fixed") return Resize::fixed;
  throw_usage("unknown resize '" + name + "' (expected squash, pad or fixed)");
}

namespace {

using ByteSpan = std::span<const uint8_t>;

bool is_jpeg(ByteSpan b) {
  return b.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF;
}

bool is_png(ByteSpan b) {
  static constexpr std::array<uint8_t, 8> sig = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  return b.size() >= 8 && std::equal(sig.begin(), sig.end(), b.begin());
}

// libjpeg decodes a truncated JPEG without failing (grey fill and a warning on stderr), so walk
// the marker structure to the end-of-image marker. Segment lengths are followed, so an EOI inside
// an EXIF thumbnail does not count; inside entropy-coded data 0xFF is always stuffed or a marker.
bool jpeg_has_end(ByteSpan b) {
  const size_t n = b.size();
  size_t pos = 2;  // after SOI
  while (pos < n) {
    if (b[pos] != 0xFF) {  // stray bytes between segments: skip to the next marker, as libjpeg does
      ++pos;
      continue;
    }
    while (pos < n && b[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= n) return false;
    const uint8_t m = b[pos++];
    if (m == 0xD9) return true;                                        // EOI
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // no length
    if (pos + 2 > n) return false;
    const size_t len = (size_t{b[pos]} << 8) | b[pos + 1];
    if (len < 2) return false;
    pos += len;
    if (pos > n) return false;
    if (m == 0xDA) {  // start of scan: entropy-coded data runs to the next real marker
      while (pos + 1 < n) {
        if (b[pos] == 0xFF) {
          const uint8_t next = b[pos + 1];
          if (next != 0x00 && next != 0xFF && !(next >= 0xD0 && next <= 0xD7)) break;
          pos += (next == 0xFF) ? 1 : 2;
        } else {
          ++pos;
        }
      }
      if (pos + 1 >= n) return false;
    }
  }
  return false;
}

bool png_has_end(ByteSpan b) {
  size_t pos = 8;
  while (pos + 8 <= b.size()) {
    const uint64_t len = (uint64_t{b[pos]} << 24) | (uint64_t{b[pos + 1]} << 16) |
                         (uint64_t{b[pos + 2]} << 8) | b[pos + 3];
    const bool iend = std::memcmp(&b[pos + 4], "IEND", 4) == 0;
    pos += 12 + len;  // length, type, data, crc
    if (pos > b.size()) return false;
    if (iend) return true;
  }
  return false;
}

// Decodes any supported image with its own depth and channel count; `name` is the file or the
// request input the bytes came from.
cv::Mat decode(ByteSpan bytes, const std::string& name) {
  if (bytes.empty()) throw_bad_input(name, "empty, not an image");
  if (is_jpeg(bytes) && !jpeg_has_end(bytes))
    throw_bad_input(name, "truncated JPEG (no end-of-image marker)");
  if (is_png(bytes) && !png_has_end(bytes)) throw_bad_input(name, "truncated PNG (no IEND chunk)");
  cv::Mat img;
  try {
    // imdecode only reads its input: the cast does not lead to a write.
    const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8U, const_cast<uint8_t*>(bytes.data()));
    img = cv::imdecode(raw, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    throw_bad_input(name, "cannot decode the image: " + e.msg);
  }
  if (img.empty())
    throw_bad_input(name, is_jpeg(bytes) || is_png(bytes) ? "corrupt image, cannot decode it"
                                                          : "not an image or an unsupported format");
  return img;
}

cv::Mat decode(const fs::path& file) {
  const std::string data = read_file(file);
  return decode(ByteSpan(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
                file.string());
}

// Any depth to 8 bits: 16-bit by /257 (65535 -> 255), float images are taken as [0, 1].
cv::Mat to_8bit(const cv::Mat& img, const std::string& name) {
  cv::Mat out;
  switch (img.depth()) {
    case CV_8U:
      return img;
    case CV_16U:
      img.convertTo(out, CV_8U, 1.0 / 257.0);
      return out;
    case CV_32F:
    case CV_64F:
      img.convertTo(out, CV_8U, 255.0);
      return out;
    default:
      throw_bad_input(name, "unsupported pixel type (signed integer samples)");
  }
}

// Any decoded image as CV_8UC3 RGB.
cv::Mat to_rgb(const cv::Mat& decoded, const std::string& name) {
  const cv::Mat img = to_8bit(decoded, name);
  cv::Mat rgb;
  switch (img.channels()) {
    case 1:
      cv::cvtColor(img, rgb, cv::COLOR_GRAY2RGB);
      break;
    case 2: {  // grey + alpha
      cv::Mat grey;
      cv::extractChannel(img, grey, 0);
      cv::cvtColor(grey, rgb, cv::COLOR_GRAY2RGB);
      break;
    }
    case 3:
      cv::cvtColor(img, rgb, cv::COLOR_BGR2RGB);
      break;
    case 4:
      cv::cvtColor(img, rgb, cv::COLOR_BGRA2RGB);
      break;
    default:
      throw_bad_input(name,
                      "unsupported image with " + std::to_string(img.channels()) + " channels");
  }
  PATCHCORE_ASSERT(rgb.type() == CV_8UC3 && rgb.isContinuous());
  return rgb;
}

Image to_image(const cv::Mat& rgb, const std::string& name) {
  Image out;
  out.height = rgb.rows;
  out.width = rgb.cols;
  out.pixels.assign(rgb.data, rgb.data + rgb.total() * 3);
  out.name = name;
  return out;
}

}  // namespace

cv::Mat load_rgb(const fs::path& file) { return to_rgb(decode(file), file.string()); }

cv::Mat decode_rgb(const uint8_t* data, size_t size, const std::string& name,
                   int64_t max_pixels) {
  if (max_pixels > 0) {
    const ImageHeader h = probe_image(data, size, name);
    const int64_t pixels = static_cast<int64_t>(h.width) * h.height;
    if (pixels > max_pixels)
      throw_bad_input(name, "the " + h.format + " header claims " + std::to_string(h.width) +
                                " x " + std::to_string(h.height) + " pixels, more than the " +
                                std::to_string(max_pixels) + " allowed");
  }
  return to_rgb(decode(ByteSpan(data, size), name), name);
}

void check_view(const ImageView& v) {
  const std::string& name = v.name.empty() ? std::string("(image in memory)") : v.name;
  if (v.height < 1 || v.width < 1)
    throw_bad_input(name, "empty image (" + std::to_string(v.height) + " x " +
                              std::to_string(v.width) + ")");
  if (v.channels != 1 && v.channels != 3 && v.channels != 4)
    throw_bad_input(name, std::to_string(v.channels) +
                              " channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)");
  const int64_t row = static_cast<int64_t>(v.width) * v.channels;
  if (v.stride != 0 && v.stride < row)
    throw_bad_input(name, "row stride " + std::to_string(v.stride) +
                              " is shorter than a row (" + std::to_string(row) + " bytes)");
  if (v.data == nullptr) throw_bad_input(name, "no pixel data");
}

cv::Mat view_rgb(const ImageView& v) {
  check_view(v);
  const int64_t stride = v.stride == 0 ? static_cast<int64_t>(v.width) * v.channels : v.stride;
  // A Mat header over the caller's rows, then a converted copy: the pixels are never written.
  const cv::Mat wrapped(v.height, v.width, CV_8UC(v.channels), const_cast<uint8_t*>(v.data),
                        static_cast<size_t>(stride));
  cv::Mat rgb;
  if (v.channels == 1)
    cv::cvtColor(wrapped, rgb, cv::COLOR_GRAY2RGB);
  else if (v.channels == 4)
    cv::cvtColor(wrapped, rgb, cv::COLOR_RGBA2RGB);
  else
    rgb = wrapped.clone();
  return rgb;
}

Image decode_image(const uint8_t* data, size_t size, const std::string& name,
                   int64_t max_pixels) {
  return to_image(decode_rgb(data, size, name, max_pixels), name);
}

Image load_image(const fs::path& file) { return to_image(load_rgb(file), file.string()); }

void write_bgr(const fs::path& file, const cv::Mat& bgr) {
  std::error_code ec;
  if (file.has_parent_path()) fs::create_directories(file.parent_path(), ec);
  bool ok = false;
  try {
    ok = cv::imwrite(file.string(), bgr);
  } catch (const cv::Exception& e) {
    throw_bad_input(file.string(), std::string("cannot write the image: ") + e.what());
  }
  if (!ok) throw_bad_input(file.string(), "cannot write the image");
}

cv::Mat load_mask(const fs::path& file, int size) {
  const cv::Mat img = to_8bit(decode(file), file.string());
  // A colour mask marks defects in any colour: a pixel counts when one of its channels does.
  cv::Mat grey;
  if (img.channels() == 1) {
    grey = img;
  } else {
    std::vector<cv::Mat> planes;
    cv::split(img, planes);
    const int colour = std::min(img.channels(), 3);  // alpha is not a mark
    grey = planes[0].clone();
    for (int c = 1; c < colour; ++c) cv::max(grey, planes[c], grey);
  }
  if (size > 0 && (grey.cols != size || grey.rows != size))
    cv::resize(grey, grey, cv::Size(size, size), 0, 0, cv::INTER_NEAREST);
  cv::Mat mask;
  cv::threshold(grey, mask, 127, 1, cv::THRESH_BINARY);
  return mask;
}

namespace {

// torchvision's CenterCrop offset: int(round((in - out) / 2)) with Python's half-to-even round.
int centre_offset(int in, int out) {
  const int diff = in - out;
  const int half = diff / 2;
  return (diff % 2 == 0) ? half : (half % 2 == 0 ? half : half + 1);
}

void check_geometry(const Preprocess& p) {
  if (p.image_size <= 0)
    throw_usage("image size must be positive, got " + std::to_string(p.image_size));
  if (p.crop < 0) throw_usage("crop must be 0 or positive, got " + std::to_string(p.crop));
  if (p.crop > p.image_size)
    throw_usage("crop " + std::to_string(p.crop) + " is larger than the image size " +
                std::to_string(p.image_size));
  if (p.resize != Resize::squash && p.crop > 0)
    throw_usage(std::string("the ") + to_string(p.resize) +
                " resize keeps the whole image: it cannot be combined with a crop");
  if (p.resize == Resize::fixed && !(p.scale > 0 && std::isfinite(p.scale)))
    throw_usage("the fixed resize needs a positive scale factor");
  if (p.intensity == Intensity::automatic)
    throw_usage("the intensity rule 'auto' must be resolved by fit before images are prepared");
}

// The pad modes' rectangle: scaled (longer side S, or the fixed factor when that fits), each
// side rounded, centred (the extra pixel right / bottom).
cv::Rect pad_rect(const cv::Size& image, const Preprocess& p) {
  const int s = p.image_size;
  double scale = static_cast<double>(s) / std::max(image.width, image.height);
  if (p.resize == Resize::fixed) scale = std::min(scale, p.scale);
  const int w = std::clamp(static_cast<int>(std::lround(image.width * scale)), 1, s);
  const int h = std::clamp(static_cast<int>(std::lround(image.height * scale)), 1, s);
  return cv::Rect((s - w) / 2, (s - h) / 2, w, h);
}

// The resize + crop shared by images and masks; `pad` fills the pad mode's border.
cv::Mat apply_geometry(const cv::Mat& src, const Preprocess& p, int interpolation,
                       const cv::Scalar& pad) {
  check_geometry(p);
  PATCHCORE_ASSERT(!src.empty());
  const int s = p.image_size;
  cv::Mat resized;
  if (p.resize != Resize::squash) {
    const cv::Rect r = pad_rect(src.size(), p);
    if (r.size() == src.size() && r.width == s && r.height == s) return src;
    cv::Mat out(s, s, src.type(), pad);
    cv::resize(src, resized, r.size(), 0, 0, interpolation);
    resized.copyTo(out(r));
    return out;
  }
  if (p.crop == 0) {
    if (src.cols == s && src.rows == s) return src;
    cv::resize(src, resized, cv::Size(s, s), 0, 0, interpolation);
    return resized;
  }
  // Shorter side to S, longer side int(S * long / short) as torchvision's Resize(int) does.
  int w = s, h = s;
  if (src.cols < src.rows) {
    h = static_cast<int>(static_cast<int64_t>(s) * src.rows / src.cols);
  } else {
    w = static_cast<int>(static_cast<int64_t>(s) * src.cols / src.rows);
  }
  if (src.cols == w && src.rows == h) {
    resized = src;
  } else {
    cv::resize(src, resized, cv::Size(w, h), 0, 0, interpolation);
  }
  const int c = p.crop;
  const cv::Rect roi(centre_offset(w, c), centre_offset(h, c), c, c);
  return resized(roi);
}

}  // namespace

Preprocess preprocess_for(const Params& p) {
  return Preprocess{p.image_size, p.crop,         normalization_from_string(p.normalization),
                    p.resize,     p.resize_scale, p.intensity};
}

cv::Rect content_rect(const cv::Size& image, const Preprocess& p) {
  check_geometry(p);
  PATCHCORE_ASSERT(image.width > 0 && image.height > 0);
  if (p.resize != Resize::squash) return pad_rect(image, p);
  return cv::Rect(0, 0, p.input_size(), p.input_size());
}

void preprocess_into(const cv::Mat& rgb, const Preprocess& p, float* dst) {
  PATCHCORE_ASSERT(rgb.type() == CV_8UC3);
  // The pad is the colour each normalisation maps to (about) zero.
  cv::Scalar pad(0, 0, 0);
  if (p.normalization == Normalization::imagenet) pad = cv::Scalar(124, 116, 104);
  if (p.normalization == Normalization::m11) pad = cv::Scalar(128, 128, 128);
  const cv::Mat img = apply_geometry(rgb, p, cv::INTER_LINEAR, pad);
  const int n = p.input_size();
  PATCHCORE_ASSERT(img.rows == n && img.cols == n);
  const cv::Rect content = content_rect(rgb.size(), p);

  // Per-channel affine map of 8-bit values before the network's normalisation: identity, or
  // this image's statistics (inside its content) to ImageNet's.
  std::array<double, 3> gain{1, 1, 1}, offset{0, 0, 0};
  if (p.intensity == Intensity::standardize) {
    static constexpr double kTargetMean[3] = {0.485 * 255, 0.456 * 255, 0.406 * 255};
    static constexpr double kTargetStd[3] = {0.229 * 255, 0.224 * 255, 0.225 * 255};
    cv::Scalar mean, sd;
    cv::meanStdDev(img(content), mean, sd);
    for (int c = 0; c < 3; ++c) {
      // A flat channel stays flat rather than amplifying sub-level noise without bound.
      gain[c] = kTargetStd[c] / std::max(sd[c], 1.0);
      offset[c] = kTargetMean[c] - gain[c] * mean[c];
    }
  }

  // Tables per channel: exact per value and cheaper than arithmetic per pixel. `lut` serves
  // the image, `pad_lut` the pad (never standardised: the pad must stay zero input).
  std::array<std::array<float, 256>, 3> lut{}, pad_lut{};
  static constexpr float kMean[3] = {0.485f, 0.456f, 0.406f};
  static constexpr float kStd[3] = {0.229f, 0.224f, 0.225f};
  auto normalise = [&](int c, float x) {
    switch (p.normalization) {
      case Normalization::imagenet:
        return (x / 255.0f - kMean[c]) / kStd[c];
      case Normalization::m11:
        return x / 127.5f - 1.0f;
      case Normalization::unit:
        break;
    }
    return x / 255.0f;
  };
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      pad_lut[c][v] = normalise(c, static_cast<float>(v));
      const double x = std::clamp(gain[c] * v + offset[c], 0.0, 255.0);
      lut[c][v] =
          p.intensity == Intensity::keep ? pad_lut[c][v] : normalise(c, static_cast<float>(x));
    }
  }
  const size_t plane = static_cast<size_t>(n) * n;
  for (int y = 0; y < n; ++y) {
    const uint8_t* row = img.ptr<uint8_t>(y);
    float* r = dst + static_cast<size_t>(y) * n;
    float* g = r + plane;
    float* b = g + plane;
    const bool row_in = y >= content.y && y < content.y + content.height;
    for (int x = 0; x < n; ++x) {
      const auto& t = row_in && x >= content.x && x < content.x + content.width ? lut : pad_lut;
      r[x] = t[0][row[3 * x]];
      g[x] = t[1][row[3 * x + 1]];
      b[x] = t[2][row[3 * x + 2]];
    }
  }
}

cv::Mat preprocess_mask(const cv::Mat& mask01, const Preprocess& p) {
  PATCHCORE_ASSERT(mask01.type() == CV_8UC1);
  return apply_geometry(mask01, p, cv::INTER_NEAREST, cv::Scalar(0)).clone();
}

}  // namespace patchcore
