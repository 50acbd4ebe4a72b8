// probe_image(): an encoded image's size from its header, before any pixel is decoded.
//
// Written by hand because OpenCV 4.6 has no public header-only read: cv::imdecode allocates the
// whole image first (its own guard, OPENCV_IO_MAX_IMAGE_PIXELS, is a process-wide setting read
// once), and a server must refuse a decompression bomb before it allocates.
#include <cstring>
#include <string>

#include "error.h"
#include "patchcore/patchcore.h"

namespace patchcore {
namespace {

class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size, const std::string& name)
      : data_(data), size_(size), name_(name) {}
  size_t size() const { return size_; }
  bool has(size_t pos, size_t n) const { return pos <= size_ && n <= size_ - pos; }
  uint32_t be(size_t pos, int n) const {
    need(pos, n);
    uint32_t v = 0;
    for (int i = 0; i < n; ++i) v = (v << 8) | data_[pos + i];
    return v;
  }
  uint32_t le(size_t pos, int n) const {
    need(pos, n);
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | data_[pos + i];
    return v;
  }
  bool starts(size_t pos, const char* text) const {
    const size_t n = std::strlen(text);
    return has(pos, n) && std::memcmp(data_ + pos, text, n) == 0;
  }
  [[noreturn]] void fail(const std::string& what) const { throw_bad_input(name_, what); }

 private:
  void need(size_t pos, int n) const {
    if (!has(pos, static_cast<size_t>(n))) fail("image header cut short");
  }
  const uint8_t* data_;
  size_t size_;
  const std::string& name_;
};

ImageHeader png(const Bytes& b) {
  if (!b.starts(12, "IHDR")) b.fail("PNG without an IHDR chunk first");
  return {"png", static_cast<int>(b.be(16, 4)), static_cast<int>(b.be(20, 4))};
}

// Markers are walked by their lengths up to the first start-of-frame (SOF0-15 less DHT, JPG and
// DAC, which share the range).
ImageHeader jpeg(const Bytes& b) {
  size_t pos = 2;
  while (true) {
    while (b.be(pos, 1) != 0xFF) ++pos;  // tolerated stray bytes, as libjpeg does
    while (b.be(pos, 1) == 0xFF) ++pos;
    const uint32_t m = b.be(pos++, 1);
    if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // no length
    if (m == 0xD9 || m == 0xDA) b.fail("JPEG without a frame header before its data");
    const uint32_t len = b.be(pos, 2);
    if (len < 2) b.fail("corrupt JPEG marker length");
    if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC)
      return {"jpeg", static_cast<int>(b.be(pos + 5, 2)), static_cast<int>(b.be(pos + 3, 2))};
    pos += len;
  }
}

ImageHeader bmp(const Bytes& b) {
  const uint32_t header = b.le(14, 4);
  if (header == 12)  // OS/2 BITMAPCOREHEADER: 16-bit sizes
    return {"bmp", static_cast<int>(b.le(18, 2)), static_cast<int>(b.le(20, 2))};
  const auto w = static_cast<int32_t>(b.le(18, 4));
  const auto h = static_cast<int32_t>(b.le(22, 4));  // negative: rows stored top-down
  if (w <= 0 || h == INT32_MIN) b.fail("corrupt BMP size");
  return {"bmp", w, h < 0 ? -h : h};
}

// The first image file directory's ImageWidth (256) and ImageLength (257), SHORT or LONG.
ImageHeader tiff(const Bytes& b, bool little) {
  auto rd = [&](size_t pos, int n) { return little ? b.le(pos, n) : b.be(pos, n); };
  const size_t ifd = rd(4, 4);
  const uint32_t count = rd(ifd, 2);
  int64_t w = -1, h = -1;
  for (uint32_t i = 0; i < count; ++i) {
    const size_t e = ifd + 2 + 12 * static_cast<size_t>(i);
    const uint32_t tag = rd(e, 2), type = rd(e + 2, 2);
    if (tag != 256 && tag != 257) continue;
    const int64_t v = type == 3 ? rd(e + 8, 2) : type == 4 ? rd(e + 8, 4) : -1;
    (tag == 256 ? w : h) = v;
  }
  if (w < 0 || h < 0 || w > INT32_MAX || h > INT32_MAX) b.fail("TIFF without a readable size");
  return {"tiff", static_cast<int>(w), static_cast<int>(h)};
}

ImageHeader webp(const Bytes& b) {
  if (b.starts(12, "VP8X"))
    return {"webp", static_cast<int>(b.le(24, 3) + 1), static_cast<int>(b.le(27, 3) + 1)};
  if (b.starts(12, "VP8L")) {
    const uint32_t bits = b.le(21, 4);
    return {"webp", static_cast<int>((bits & 0x3FFF) + 1),
            static_cast<int>(((bits >> 14) & 0x3FFF) + 1)};
  }
  if (b.starts(12, "VP8 "))
    return {"webp", static_cast<int>(b.le(26, 2) & 0x3FFF),
            static_cast<int>(b.le(28, 2) & 0x3FFF)};
  b.fail("WebP of an unknown kind");
}

}  // namespace

ImageHeader probe_image(const uint8_t* data, size_t size, const std::string& name) {
  const Bytes b(data, size, name);
  if (size == 0) b.fail("empty, not an image");
  ImageHeader h;
  if (b.starts(0, "\x89PNG\r\n\x1a\n")) {
    h = png(b);
  } else if (b.has(0, 3) && b.be(0, 3) == 0xFFD8FF) {
    h = jpeg(b);
  } else if (b.starts(0, "BM")) {
    h = bmp(b);
  } else if (b.starts(0, "II*") && b.be(3, 1) == 0) {
    h = tiff(b, true);
  } else if (b.starts(0, "MM") && b.be(2, 2) == 42) {
    h = tiff(b, false);
  } else if (b.starts(0, "RIFF") && b.starts(8, "WEBP")) {
    h = webp(b);
  } else {
    b.fail("not a PNG, JPEG, BMP, TIFF or WebP image");
  }
  if (h.width <= 0 || h.height <= 0)
    b.fail("the " + h.format + " header gives an empty size (" + std::to_string(h.width) + " x " +
           std::to_string(h.height) + ")");
  return h;
}

}  // namespace patchcore
