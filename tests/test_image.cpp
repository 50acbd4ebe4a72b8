#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <vector>

#include "error.h"
#include "image.h"
#include "test_support.h"

namespace fs = std::filesystem;
using patchcore::Error;
using patchcore::ErrorKind;
using patchcore::load_mask;
using patchcore::load_rgb;
using patchcore::Normalization;
using patchcore::Preprocess;
using patchcore::testing::read_bytes;
using patchcore::testing::TempDir;
using patchcore::testing::write_bytes;

namespace {

// The message must name the file; returns it for further checks.
std::string expect_bad_image(const fs::path& file) {
  return patchcore::testing::expect_bad_input_naming(file, [&] { load_rgb(file); });
}

// A BGR test pattern whose pixels differ in every channel.
cv::Mat pattern_bgr(int w, int h) {
  cv::Mat m(h, w, CV_8UC3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      m.at<cv::Vec3b>(y, x) =
          cv::Vec3b(static_cast<uint8_t>(x * 7 + y), static_cast<uint8_t>(y * 11 + 3),
                    static_cast<uint8_t>((x * y) % 256));
  return m;
}

void write_image(const fs::path& file, const cv::Mat& m, const std::vector<int>& params = {}) {
  ASSERT_TRUE(cv::imwrite(file.string(), m, params)) << file;
}

cv::Vec3b rgb_at(const cv::Mat& m, int x, int y) { return m.at<cv::Vec3b>(y, x); }

}  // namespace

TEST(Image, NormalizationNames) {
  for (Normalization n : {Normalization::imagenet, Normalization::m11, Normalization::unit})
    EXPECT_EQ(patchcore::normalization_from_string(patchcore::to_string(n)), n);
  EXPECT_STREQ(patchcore::to_string(Normalization::m11), "m11");
  try {
    patchcore::normalization_from_string("ImageNet");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("ImageNet"), std::string::npos);
  }
}

TEST(Image, LoadsRgbPngInRgbOrder) {
  TempDir dir;
  const cv::Mat bgr = pattern_bgr(9, 5);
  write_image(dir / "c.png", bgr);
  const cv::Mat rgb = load_rgb(dir / "c.png");
  ASSERT_EQ(rgb.type(), CV_8UC3);
  ASSERT_EQ(rgb.size(), cv::Size(9, 5));
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 9; ++x) {
      const cv::Vec3b b = bgr.at<cv::Vec3b>(y, x);
      EXPECT_EQ(rgb_at(rgb, x, y), cv::Vec3b(b[2], b[1], b[0])) << x << "," << y;
    }
}

TEST(Image, GreyIsReplicated) {
  TempDir dir;
  cv::Mat grey(4, 6, CV_8UC1);
  for (int i = 0; i < 24; ++i) grey.data[i] = static_cast<uint8_t>(i * 10);
  write_image(dir / "g.png", grey);
  const cv::Mat rgb = load_rgb(dir / "g.png");
  ASSERT_EQ(rgb.type(), CV_8UC3);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 6; ++x) {
      const uint8_t v = grey.at<uint8_t>(y, x);
      EXPECT_EQ(rgb_at(rgb, x, y), cv::Vec3b(v, v, v));
    }
}

TEST(Image, AlphaIsDropped) {
  TempDir dir;
  cv::Mat bgra(3, 3, CV_8UC4, cv::Scalar(10, 20, 30, 0));  // fully transparent
  bgra.at<cv::Vec4b>(1, 2) = cv::Vec4b(1, 2, 3, 200);
  write_image(dir / "a.png", bgra);
  const cv::Mat rgb = load_rgb(dir / "a.png");
  ASSERT_EQ(rgb.type(), CV_8UC3);
  EXPECT_EQ(rgb_at(rgb, 0, 0), cv::Vec3b(30, 20, 10));
  EXPECT_EQ(rgb_at(rgb, 2, 1), cv::Vec3b(3, 2, 1));
}

TEST(Image, SixteenBitIsScaled) {
  TempDir dir;
  cv::Mat m(1, 4, CV_16UC3);
  m.at<cv::Vec3w>(0, 0) = cv::Vec3w(0, 257 * 100, 65535);
  m.at<cv::Vec3w>(0, 1) = cv::Vec3w(1000, 128, 257 * 200 + 128);
  m.at<cv::Vec3w>(0, 2) = cv::Vec3w(65535, 65535, 65535);
  m.at<cv::Vec3w>(0, 3) = cv::Vec3w(300, 400, 500);
  write_image(dir / "w.png", m);
  const cv::Mat rgb = load_rgb(dir / "w.png");
  ASSERT_EQ(rgb.type(), CV_8UC3);
  EXPECT_EQ(rgb_at(rgb, 0, 0), cv::Vec3b(255, 100, 0));
  // 1000/257 = 3.89 -> 4; 128/257 = 0.498 -> 0; (257*200+128)/257 = 200.498 -> 200
  EXPECT_EQ(rgb_at(rgb, 1, 0), cv::Vec3b(200, 0, 4));
  EXPECT_EQ(rgb_at(rgb, 2, 0), cv::Vec3b(255, 255, 255));

  cv::Mat grey16(2, 2, CV_16UC1, cv::Scalar(257 * 77));
  write_image(dir / "g16.png", grey16);
  EXPECT_EQ(rgb_at(load_rgb(dir / "g16.png"), 1, 1), cv::Vec3b(77, 77, 77));
}

TEST(Image, FloatTiffIsUnitRange) {
  TempDir dir;
  cv::Mat m(2, 2, CV_32FC3, cv::Scalar(0.0f, 0.25f, 1.0f));
  // OpenCV stores 3-channel float TIFF as lossy LogLuv unless told otherwise.
  write_image(dir / "f.tiff", m, {cv::IMWRITE_TIFF_COMPRESSION, 1});
  const cv::Mat rgb = load_rgb(dir / "f.tiff");
  EXPECT_EQ(rgb_at(rgb, 1, 1), cv::Vec3b(255, 64, 0));
}

TEST(Image, JpegLoadsApproximately) {
  TempDir dir;
  cv::Mat bgr(16, 24, CV_8UC3, cv::Scalar(40, 120, 200));
  write_image(dir / "j.jpg", bgr, {cv::IMWRITE_JPEG_QUALITY, 95});
  const cv::Mat rgb = load_rgb(dir / "j.jpg");
  ASSERT_EQ(rgb.size(), cv::Size(24, 16));
  const cv::Vec3b p = rgb_at(rgb, 10, 7);
  EXPECT_NEAR(p[0], 200, 3);
  EXPECT_NEAR(p[1], 120, 3);
  EXPECT_NEAR(p[2], 40, 3);

  cv::Mat grey(8, 8, CV_8UC1, cv::Scalar(90));
  write_image(dir / "g.jpeg", grey);
  const cv::Vec3b q = rgb_at(load_rgb(dir / "g.jpeg"), 3, 3);
  EXPECT_NEAR(q[0], 90, 2);
  EXPECT_EQ(q[0], q[1]);
  EXPECT_EQ(q[1], q[2]);

  // Bytes after the end marker (some cameras append data) are harmless.
  write_bytes(dir / "tail.jpg", read_bytes(dir / "j.jpg") + std::string(100, '\xAB'));
  EXPECT_EQ(load_rgb(dir / "tail.jpg").size(), cv::Size(24, 16));
}

TEST(Image, OtherFormats) {
  TempDir dir;
  const cv::Mat bgr = pattern_bgr(5, 4);
  write_image(dir / "b.bmp", bgr);
  const cv::Mat rgb = load_rgb(dir / "b.bmp");
  EXPECT_EQ(rgb_at(rgb, 3, 2), cv::Vec3b(bgr.at<cv::Vec3b>(2, 3)[2], bgr.at<cv::Vec3b>(2, 3)[1],
                                         bgr.at<cv::Vec3b>(2, 3)[0]));
}

TEST(Image, TruncatedJpeg) {
  TempDir dir;
  write_image(dir / "full.jpg", pattern_bgr(32, 24));
  const std::string bytes = read_bytes(dir / "full.jpg");
  const fs::path cut = dir / "cut.jpg";
  write_bytes(cut, bytes.substr(0, bytes.size() / 2));
  const std::string msg = expect_bad_image(cut);
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // Every shorter prefix fails cleanly too.
  for (size_t len = 0; len < bytes.size(); len += 7) {
    write_bytes(cut, bytes.substr(0, len));
    SCOPED_TRACE(len);
    expect_bad_image(cut);
  }
  write_bytes(cut, bytes.substr(0, bytes.size() - 2));  // only the end marker missing
  expect_bad_image(cut);
}

TEST(Image, TruncatedPng) {
  TempDir dir;
  write_image(dir / "full.png", pattern_bgr(32, 24));
  const std::string bytes = read_bytes(dir / "full.png");
  const fs::path cut = dir / "cut.png";
  write_bytes(cut, bytes.substr(0, bytes.size() - 12));  // without IEND
  EXPECT_NE(expect_bad_image(cut).find("truncated"), std::string::npos);
  for (size_t len = 0; len < bytes.size(); len += 5) {
    write_bytes(cut, bytes.substr(0, len));
    SCOPED_TRACE(len);
    expect_bad_image(cut);
  }
}

TEST(Image, NotAnImageMissingOrFolder) {
  TempDir dir;
  write_bytes(dir / "text.png", "this is not a picture\n");
  EXPECT_NE(expect_bad_image(dir / "text.png").find("not an image"), std::string::npos);
  write_bytes(dir / "empty.jpg", "");
  expect_bad_image(dir / "empty.jpg");
  EXPECT_NE(expect_bad_image(dir / "missing.png").find("no such file"), std::string::npos);
  EXPECT_NE(expect_bad_image(dir.path()).find("folder"), std::string::npos);
  // A PNG signature followed by garbage chunks.
  write_bytes(dir / "junk.png", std::string("\x89PNG\r\n\x1a\n", 8) + std::string(64, '\0'));
  expect_bad_image(dir / "junk.png");
}

TEST(Image, LoadMask) {
  TempDir dir;
  cv::Mat m(2, 4, CV_8UC1);
  const uint8_t values[] = {0, 127, 128, 255, 1, 200, 30, 129};
  std::copy(values, values + 8, m.data);
  write_image(dir / "m_mask.png", m);

  const cv::Mat same = load_mask(dir / "m_mask.png", 0);  // 0 keeps the size
  ASSERT_EQ(same.type(), CV_8UC1);
  ASSERT_EQ(same.size(), cv::Size(4, 2));
  const uint8_t expected[] = {0, 0, 1, 1, 0, 1, 0, 1};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(same.data[i], expected[i]) << i;

  // Nearest resize to 8 x 8 equals OpenCV's nearest resize of the thresholded mask.
  const cv::Mat big = load_mask(dir / "m_mask.png", 8);
  ASSERT_EQ(big.size(), cv::Size(8, 8));
  cv::Mat ref;
  cv::resize(same, ref, cv::Size(8, 8), 0, 0, cv::INTER_NEAREST);
  EXPECT_EQ(cv::countNonZero(big != ref), 0);
  EXPECT_EQ(cv::countNonZero(big), 32);

  // A red mark on a colour mask counts as defect.
  cv::Mat colour(2, 2, CV_8UC3, cv::Scalar(0, 0, 0));
  colour.at<cv::Vec3b>(0, 1) = cv::Vec3b(0, 0, 255);
  write_image(dir / "c.png", colour);
  const cv::Mat c = load_mask(dir / "c.png", 2);
  EXPECT_EQ(c.at<uint8_t>(0, 1), 1);
  EXPECT_EQ(cv::countNonZero(c), 1);

  try {
    load_mask(dir / "nope_mask.png", 8);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope_mask.png"), std::string::npos);
  }
}

namespace {

// Plain reference: per-pixel normalisation of an already-sized RGB image, in double precision.
std::vector<float> reference_chw(const cv::Mat& rgb, Normalization n) {
  const double mean[3] = {0.485, 0.456, 0.406}, stdv[3] = {0.229, 0.224, 0.225};
  const int h = rgb.rows, w = rgb.cols;
  std::vector<float> out(3 * h * w);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const double v = rgb.at<cv::Vec3b>(y, x)[c];
        double r = 0;
        if (n == Normalization::imagenet) r = (v / 255.0 - mean[c]) / stdv[c];
        if (n == Normalization::m11) r = v / 127.5 - 1.0;
        if (n == Normalization::unit) r = v / 255.0;
        out[(c * h + y) * w + x] = static_cast<float>(r);
      }
  return out;
}

std::vector<float> run(const cv::Mat& rgb, const Preprocess& p) {
  std::vector<float> out(3 * p.input_size() * p.input_size(), -99.0f);
  patchcore::preprocess_into(rgb, p, out.data());
  return out;
}

}  // namespace

TEST(Image, KnownPixelUnderEachNormalization) {
  cv::Mat rgb(2, 2, CV_8UC3, cv::Scalar(255, 0, 128));  // R=255 G=0 B=128
  Preprocess p;
  p.image_size = 2;
  p.normalization = Normalization::imagenet;
  std::vector<float> v = run(rgb, p);
  EXPECT_NEAR(v[0], (1.0 - 0.485) / 0.229, 1e-5);
  EXPECT_NEAR(v[4], (0.0 - 0.456) / 0.224, 1e-5);
  EXPECT_NEAR(v[8], (128 / 255.0 - 0.406) / 0.225, 1e-5);
  p.normalization = Normalization::m11;
  v = run(rgb, p);
  EXPECT_NEAR(v[0], 1.0, 1e-6);
  EXPECT_NEAR(v[4], -1.0, 1e-6);
  EXPECT_NEAR(v[8], 128 / 127.5 - 1.0, 1e-6);
  p.normalization = Normalization::unit;
  v = run(rgb, p);
  EXPECT_NEAR(v[0], 1.0, 1e-6);
  EXPECT_NEAR(v[4], 0.0, 1e-6);
  EXPECT_NEAR(v[8], 128 / 255.0, 1e-6);
}

TEST(Image, PlanarLayoutWithoutResize) {
  cv::Mat rgb;
  cv::cvtColor(pattern_bgr(7, 7), rgb, cv::COLOR_BGR2RGB);
  Preprocess p;
  p.image_size = 7;
  for (Normalization n : {Normalization::imagenet, Normalization::m11, Normalization::unit}) {
    p.normalization = n;
    const std::vector<float> got = run(rgb, p);
    const std::vector<float> ref = reference_chw(rgb, n);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-5) << i;
  }
  // Pixel (x=2, y=5) of channel G sits at 1*49 + 5*7 + 2.
  p.normalization = Normalization::unit;
  EXPECT_FLOAT_EQ(run(rgb, p)[49 + 37], rgb.at<cv::Vec3b>(5, 2)[1] / 255.0f);
}

TEST(Image, SquareResizeIsBilinear) {
  cv::Mat rgb;
  cv::cvtColor(pattern_bgr(40, 30), rgb, cv::COLOR_BGR2RGB);
  Preprocess p;
  p.image_size = 16;
  p.normalization = Normalization::m11;
  cv::Mat resized;
  cv::resize(rgb, resized, cv::Size(16, 16), 0, 0, cv::INTER_LINEAR);
  const std::vector<float> got = run(rgb, p);
  const std::vector<float> ref = reference_chw(resized, Normalization::m11);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-5) << i;
}

TEST(Image, CropGeometry) {
  // 20 x 10 at S = 8: shorter side 10 -> 8, longer 20 -> 16; crop 6 starts at x 5, y 1.
  cv::Mat rgb;
  cv::cvtColor(pattern_bgr(20, 10), rgb, cv::COLOR_BGR2RGB);
  Preprocess p;
  p.image_size = 8;
  p.crop = 6;
  p.normalization = Normalization::unit;
  EXPECT_EQ(p.input_size(), 6);
  cv::Mat resized;
  cv::resize(rgb, resized, cv::Size(16, 8), 0, 0, cv::INTER_LINEAR);
  std::vector<float> ref =
      reference_chw(resized(cv::Rect(5, 1, 6, 6)).clone(), Normalization::unit);
  std::vector<float> got = run(rgb, p);
  ASSERT_EQ(got.size(), 3u * 36);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-6) << i;

  // 21 x 10 at S = 8: longer side int(8 * 21 / 10) = 16; crop 5: x offset round(5.5) = 6 and
  // y offset round(1.5) = 2 (Python's half-to-even round, as torchvision's CenterCrop).
  cv::cvtColor(pattern_bgr(21, 10), rgb, cv::COLOR_BGR2RGB);
  p.crop = 5;
  cv::resize(rgb, resized, cv::Size(16, 8), 0, 0, cv::INTER_LINEAR);
  ref = reference_chw(resized(cv::Rect(6, 2, 5, 5)).clone(), Normalization::unit);
  got = run(rgb, p);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-6) << i;

  // Crop 3: x offset round(6.5) = 6 and y offset round(2.5) = 2, not 7 and 3.
  p.crop = 3;
  ref = reference_chw(resized(cv::Rect(6, 2, 3, 3)).clone(), Normalization::unit);
  got = run(rgb, p);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-6) << i;

  p.crop = 9;  // larger than the resized shorter side
  EXPECT_THROW(run(rgb, p), Error);
}

TEST(Image, PadKeepsTheAspectRatioAndPadsWithZeroInput) {
  // 20 x 10 at S = 8: scale 0.4 -> 8 x 4, centred: rows 2..5, pad rows 0-1 and 6-7.
  cv::Mat rgb;
  cv::cvtColor(pattern_bgr(20, 10), rgb, cv::COLOR_BGR2RGB);
  Preprocess p;
  p.image_size = 8;
  p.resize = patchcore::Resize::pad;
  for (Normalization n : {Normalization::m11, Normalization::imagenet, Normalization::unit}) {
    p.normalization = n;
    EXPECT_EQ(patchcore::content_rect(rgb.size(), p), cv::Rect(0, 2, 8, 4));
    cv::Mat resized;
    cv::resize(rgb, resized, cv::Size(8, 4), 0, 0, cv::INTER_LINEAR);
    const std::vector<float> ref = reference_chw(resized, n);  // 3 x 4 x 8
    const std::vector<float> got = run(rgb, p);                // 3 x 8 x 8
    ASSERT_EQ(got.size(), 3u * 64);
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 8; ++y)
        for (int x = 0; x < 8; ++x) {
          const float v = got[static_cast<size_t>(c * 64 + y * 8 + x)];
          if (y >= 2 && y < 6) {
            ASSERT_NEAR(v, ref[static_cast<size_t>(c * 32 + (y - 2) * 8 + x)], 1e-6);
          } else if (n == Normalization::unit) {
            ASSERT_EQ(v, 0.0f);  // black
          } else {
            ASSERT_NEAR(v, 0.0f, 0.02f) << "pad of " << patchcore::to_string(n);
          }
        }
  }
  // Portrait 7 x 21 at S = 9: 3 x 9, the odd spare column goes right (x 3..5).
  cv::cvtColor(pattern_bgr(7, 21), rgb, cv::COLOR_BGR2RGB);
  p.image_size = 9;
  EXPECT_EQ(patchcore::content_rect(rgb.size(), p), cv::Rect(3, 0, 3, 9));
  // An extreme strip keeps at least one pixel.
  EXPECT_EQ(patchcore::content_rect(cv::Size(1000, 1), p), cv::Rect(0, 4, 9, 1));
  // A square image fills the input, as in squash mode.
  EXPECT_EQ(patchcore::content_rect(cv::Size(30, 30), p), cv::Rect(0, 0, 9, 9));
  p.resize = patchcore::Resize::squash;
  EXPECT_EQ(patchcore::content_rect(rgb.size(), p), cv::Rect(0, 0, 9, 9));
  // Padding keeps the whole image; a crop would contradict it.
  p.resize = patchcore::Resize::pad;
  p.crop = 5;
  EXPECT_THROW(run(rgb, p), Error);
  EXPECT_THROW(patchcore::content_rect(rgb.size(), p), Error);
}

TEST(Image, FixedScaleKeepsSizesComparableAndFitsLargeImages) {
  Preprocess p;
  p.image_size = 100;
  p.resize = patchcore::Resize::fixed;
  p.scale = 0.5;
  // Every image by 0.5, centred: 120 x 60 -> 60 x 30, 40 x 80 -> 20 x 40.
  EXPECT_EQ(patchcore::content_rect(cv::Size(120, 60), p), cv::Rect(20, 35, 60, 30));
  EXPECT_EQ(patchcore::content_rect(cv::Size(40, 80), p), cv::Rect(40, 30, 20, 40));
  // Too large for 0.5: scaled to fit, as pad would.
  EXPECT_EQ(patchcore::content_rect(cv::Size(400, 100), p), cv::Rect(0, 37, 100, 25));
  // The pixels are the image resized by the factor.
  cv::Mat rgb;
  cv::cvtColor(pattern_bgr(40, 20), rgb, cv::COLOR_BGR2RGB);
  p.normalization = Normalization::unit;
  cv::Mat resized;
  cv::resize(rgb, resized, cv::Size(20, 10), 0, 0, cv::INTER_LINEAR);
  const std::vector<float> ref = reference_chw(resized, Normalization::unit);
  const std::vector<float> got = run(rgb, p);
  ASSERT_EQ(got.size(), 3u * 100 * 100);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 10; ++y)
      for (int x = 0; x < 20; ++x)
        ASSERT_NEAR(got[static_cast<size_t>(c * 10000 + (45 + y) * 100 + 40 + x)],
                    ref[static_cast<size_t>(c * 200 + y * 20 + x)], 1e-6);
  EXPECT_EQ(got[0], 0.0f);  // pad
  // An image of exactly S x S is scaled by the factor too, not passed through.
  cv::Mat square(100, 100, CV_8UC3, cv::Scalar(255, 255, 255));
  const std::vector<float> sq = run(square, p);
  EXPECT_EQ(patchcore::content_rect(square.size(), p), cv::Rect(25, 25, 50, 50));
  EXPECT_EQ(sq[0], 0.0f);              // pad, top left
  EXPECT_EQ(sq[50 * 100 + 50], 1.0f);  // image, centre
  // A fixed resize without its factor is a usage error, not a silent squash.
  p.scale = 0;
  EXPECT_THROW(run(rgb, p), Error);
  EXPECT_EQ(patchcore::resize_from_string("fixed"), patchcore::Resize::fixed);
  EXPECT_STREQ(patchcore::to_string(patchcore::Resize::pad), "pad");
  EXPECT_THROW(patchcore::resize_from_string("stretch"), Error);
}

// Per-channel statistics of the input in 8-bit units (unit normalisation: value * 255).
std::array<std::pair<double, double>, 3> channel_stats(const std::vector<float>& chw, int n,
                                                       const cv::Rect& r) {
  std::array<std::pair<double, double>, 3> out{};
  for (int c = 0; c < 3; ++c) {
    double s = 0, ss = 0, k = 0;
    for (int y = r.y; y < r.y + r.height; ++y)
      for (int x = r.x; x < r.x + r.width; ++x) {
        const double v = 255.0 * chw[static_cast<size_t>(c * n * n + y * n + x)];
        s += v;
        ss += v * v;
        ++k;
      }
    out[c] = {s / k, std::sqrt(std::max(0.0, ss / k - (s / k) * (s / k)))};
  }
  return out;
}

TEST(Image, StandardizeGivesImageNetStatisticsAndIgnoresExposure) {
  // A grey texture and the same texture at another exposure and contrast (2x - 50): the same
  // network input once standardised.
  cv::Mat grey(24, 24, CV_8UC1);
  for (int y = 0; y < 24; ++y)
    for (int x = 0; x < 24; ++x)
      grey.at<uint8_t>(y, x) = static_cast<uint8_t>(60 + (x * 7 + y * 13) % 41);
  cv::Mat bright = grey * 2 - 50;
  cv::Mat a, b;
  cv::cvtColor(grey, a, cv::COLOR_GRAY2RGB);
  cv::cvtColor(bright, b, cv::COLOR_GRAY2RGB);
  Preprocess p;
  p.image_size = 24;
  p.normalization = Normalization::unit;
  p.intensity = patchcore::Intensity::standardize;
  const std::vector<float> ga = run(a, p), gb = run(b, p);
  for (size_t i = 0; i < ga.size(); ++i) ASSERT_NEAR(ga[i], gb[i], 1e-5) << i;
  const auto st = channel_stats(ga, 24, cv::Rect(0, 0, 24, 24));
  const double mean[3] = {0.485 * 255, 0.456 * 255, 0.406 * 255};
  const double sd[3] = {0.229 * 255, 0.224 * 255, 0.225 * 255};
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(st[c].first, mean[c], 0.5) << c;
    EXPECT_NEAR(st[c].second, sd[c], 0.5) << c;
  }
  // keep: the exposure shows.
  p.intensity = patchcore::Intensity::keep;
  const std::vector<float> ka = run(a, p), kb = run(b, p);
  double diff = 0;
  for (size_t i = 0; i < ka.size(); ++i) diff += std::abs(ka[i] - kb[i]);
  EXPECT_GT(diff / static_cast<double>(ka.size()), 0.1);  // mean (x - 50) / 255 is about 0.1+
  EXPECT_EQ(patchcore::intensity_from_string("standardize"), patchcore::Intensity::standardize);
  EXPECT_THROW(patchcore::intensity_from_string("equalize"), Error);
}

TEST(Image, StandardizeLeavesThePadAloneAndFlatImagesFinite) {
  cv::Mat rgb;
  cv::cvtColor(pattern_bgr(20, 10), rgb, cv::COLOR_BGR2RGB);
  Preprocess p;
  p.image_size = 20;
  p.resize = patchcore::Resize::pad;
  p.normalization = Normalization::imagenet;
  p.intensity = patchcore::Intensity::standardize;
  const std::vector<float> got = run(rgb, p);
  const cv::Rect r = patchcore::content_rect(rgb.size(), p);  // rows 5..14
  ASSERT_EQ(r, cv::Rect(0, 5, 20, 10));
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 20; ++y)
      for (int x = 0; x < 20; ++x)
        if (!r.contains(cv::Point(x, y))) {
          ASSERT_NEAR(got[static_cast<size_t>(c * 400 + y * 20 + x)], 0.0f, 0.02f) << "pad";
        }
  // Inside: ImageNet's statistics, i.e. mean 0 and spread 1 after the imagenet normalisation.
  for (int c = 0; c < 3; ++c) {
    double s = 0, ss = 0;
    for (int y = r.y; y < r.br().y; ++y)
      for (int x = 0; x < 20; ++x) {
        const double v = got[static_cast<size_t>(c * 400 + y * 20 + x)];
        s += v;
        ss += v * v;
      }
    const double m = s / 200, sd = std::sqrt(ss / 200 - m * m);
    EXPECT_NEAR(m, 0.0, 0.1) << c;  // clamping at 0/255 may pull a little
    EXPECT_NEAR(sd, 1.0, 0.1) << c;
  }
  // A flat image: finite, and the target mean everywhere.
  cv::Mat flat(8, 8, CV_8UC3, cv::Scalar(200, 10, 90));
  p.resize = patchcore::Resize::squash;
  p.image_size = 8;
  for (float v : run(flat, p)) {
    ASSERT_TRUE(std::isfinite(v));
    ASSERT_NEAR(v, 0.0f, 0.02f);
  }
}

TEST(Image, PaddedMaskFollowsThePaddedImage) {
  cv::Mat mask(10, 20, CV_8UC1, cv::Scalar(0));
  mask(cv::Rect(15, 5, 5, 5)).setTo(1);  // bottom-right quarter
  Preprocess p;
  p.image_size = 8;
  p.resize = patchcore::Resize::pad;
  const cv::Mat out = patchcore::preprocess_mask(mask, p);
  ASSERT_EQ(out.size(), cv::Size(8, 8));
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x)
      EXPECT_EQ(out.at<uint8_t>(y, x), (y >= 4 && y < 6 && x >= 6) ? 1 : 0) << x << "," << y;
}

TEST(Image, MaskGeometryMatchesImageGeometry) {
  // Portrait 8 x 16 mask at S = 8 needs no resize; crop 4 starts at x 2, y 6.
  cv::Mat mask(16, 8, CV_8UC1, cv::Scalar(0));
  mask.at<uint8_t>(7, 3) = 1;
  Preprocess p;
  p.image_size = 8;
  p.crop = 4;
  cv::Mat out = patchcore::preprocess_mask(mask, p);
  ASSERT_EQ(out.type(), CV_8UC1);
  ASSERT_EQ(out.size(), cv::Size(4, 4));
  EXPECT_EQ(out.at<uint8_t>(1, 1), 1);
  EXPECT_EQ(cv::countNonZero(out), 1);

  // Without crop: nearest resize to S x S, values stay 0/1.
  cv::Mat m2(10, 20, CV_8UC1, cv::Scalar(0));
  m2(cv::Rect(10, 0, 10, 10)).setTo(1);
  p.crop = 0;
  out = patchcore::preprocess_mask(m2, p);
  ASSERT_EQ(out.size(), cv::Size(8, 8));
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x) EXPECT_EQ(out.at<uint8_t>(y, x), x >= 4 ? 1 : 0) << x << "," << y;
}
