// probe_image() and decode_image(): sizes from headers, bombs refused before decoding.
#include <gtest/gtest.h>

#include <opencv2/imgcodecs.hpp>

#include "patchcore/patchcore.h"
#include "test_support.h"

namespace {

std::vector<uint8_t> encode(const cv::Mat& img, const std::string& ext) {
  std::vector<uint8_t> out;
  EXPECT_TRUE(cv::imencode(ext, img, out)) << ext;
  return out;
}

patchcore::ImageHeader probe(const std::vector<uint8_t>& b) {
  return patchcore::probe_image(b.data(), b.size(), "test bytes");
}

TEST(ImageHeader, EveryFormatGivesItsSize) {
  cv::Mat img(37, 53, CV_8UC3, cv::Scalar(10, 200, 30));
  for (const char* ext : {".png", ".jpg", ".bmp", ".tiff", ".webp"}) {
    const patchcore::ImageHeader h = probe(encode(img, ext));
    EXPECT_EQ(h.width, 53) << ext;
    EXPECT_EQ(h.height, 37) << ext;
  }
  cv::Mat grey16(41, 17, CV_16UC1, cv::Scalar(1000));
  for (const char* ext : {".png", ".tiff"}) {
    const patchcore::ImageHeader h = probe(encode(grey16, ext));
    EXPECT_EQ(h.width, 17) << ext;
    EXPECT_EQ(h.height, 41) << ext;
  }
  std::vector<int> lossless{cv::IMWRITE_WEBP_QUALITY, 101};
  std::vector<uint8_t> webp;
  ASSERT_TRUE(cv::imencode(".webp", img, webp, lossless));
  EXPECT_EQ(probe(webp).width, 53);
  EXPECT_EQ(probe(webp).format, "webp");
}

TEST(ImageHeader, GarbageAndCutHeadersAreRefusedNamingTheInput) {
  const std::vector<uint8_t> png = encode(cv::Mat(8, 8, CV_8UC1, cv::Scalar(1)), ".png");
  for (size_t cut : {size_t{0}, size_t{4}, size_t{12}, size_t{19}}) {
    std::vector<uint8_t> b(png.begin(), png.begin() + static_cast<long>(cut));
    patchcore::testing::expect_bad_input_naming("test bytes", [&] { probe(b); });
  }
  const std::vector<uint8_t> text{'h', 'e', 'l', 'l', 'o'};
  const std::string msg =
      patchcore::testing::expect_bad_input_naming("test bytes", [&] { probe(text); });
  EXPECT_NE(msg.find("not a PNG, JPEG"), std::string::npos) << msg;
  // A JPEG whose only marker runs past the end.
  const std::vector<uint8_t> jpeg{0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x40, 0x00};
  patchcore::testing::expect_bad_input_naming("test bytes", [&] { probe(jpeg); });
}

TEST(ImageHeader, ABombIsRefusedFromItsHeader) {
  // A real PNG whose IHDR is rewritten to claim 60000 x 60000 (its CRC left stale: the probe
  // reads only the size, and the refusal must come before any decoder sees the pixels).
  std::vector<uint8_t> b = encode(cv::Mat(8, 8, CV_8UC1, cv::Scalar(1)), ".png");
  for (int i = 0; i < 2; ++i) {
    b[16 + 4 * i] = 0x00;
    b[17 + 4 * i] = 0x00;
    b[18 + 4 * i] = 0xEA;
    b[19 + 4 * i] = 0x60;
  }
  const std::string msg = patchcore::testing::expect_bad_input_naming(
      "input 1", [&] { patchcore::decode_image(b.data(), b.size(), "input 1", 40'000'000); });
  EXPECT_NE(msg.find("60000 x 60000"), std::string::npos) << msg;
  // Within the limit, the same picture decodes as its file would.
  const std::vector<uint8_t> ok = encode(cv::Mat(8, 9, CV_8UC1, cv::Scalar(77)), ".png");
  const patchcore::Image img = patchcore::decode_image(ok.data(), ok.size(), "input 2", 72);
  EXPECT_EQ(img.width, 9);
  EXPECT_EQ(img.height, 8);
  EXPECT_EQ(img.pixels, std::vector<uint8_t>(8 * 9 * 3, 77));
  patchcore::testing::expect_bad_input_naming(
      "input 2", [&] { patchcore::decode_image(ok.data(), ok.size(), "input 2", 71); });
}

TEST(ImageHeader, CorruptBytesAreRefusedNamingTheInput) {
  std::vector<uint8_t> jpg = encode(cv::Mat(32, 32, CV_8UC3, cv::Scalar(1, 2, 3)), ".jpg");
  jpg.resize(jpg.size() / 2);
  const std::string msg = patchcore::testing::expect_bad_input_naming(
      "camera 7", [&] { patchcore::decode_image(jpg.data(), jpg.size(), "camera 7"); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  patchcore::testing::expect_bad_input_naming(
      "camera 8", [&] { patchcore::decode_image(nullptr, 0, "camera 8"); });
}

}  // namespace
