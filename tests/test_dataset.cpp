#include <gtest/gtest.h>

#include <map>
#include <opencv2/imgcodecs.hpp>

#include "dataset.h"
#include "error.h"
#include "image.h"
#include "test_support.h"

namespace fs = std::filesystem;
using patchcore::Dataset;
using patchcore::Error;
using patchcore::ErrorKind;
using patchcore::scan_dataset;
using patchcore::testing::TempDir;
using patchcore::testing::write_bytes;

namespace {

void image(const fs::path& file) {
  fs::create_directories(file.parent_path());
  ASSERT_TRUE(cv::imwrite(file.string(), cv::Mat(4, 4, CV_8UC3, cv::Scalar(1, 2, 3))));
}

std::vector<std::string> names(const std::vector<patchcore::Sample>& samples) {
  std::vector<std::string> out;
  for (const auto& s : samples) out.push_back(s.image.filename().string());
  return out;
}

std::string expect_bad_input(const fs::path& dir) {
  return patchcore::testing::expect_bad_input_naming(dir, [&] { scan_dataset(dir); });
}

}  // namespace

TEST(Dataset, MvtecLayout) {
  TempDir t;
  const fs::path d = t.path();
  image(d / "train/good/b.png");
  image(d / "train/good/a.png");
  image(d / "train/good/c.JPG");
  write_bytes(d / "train/good/notes.txt", "not an image");
  write_bytes(d / "train/good/._a.png", "macOS resource fork");
  fs::create_directories(d / "train/good/subfolder");
  image(d / "test/good/g1.png");
  image(d / "test/scratch/s2.png");
  image(d / "test/scratch/s1.png");
  image(d / "test/scratch/s3.jpg");
  image(d / "test/crack/c1.png");
  image(d / "ground_truth/scratch/s1_mask.png");
  image(d / "ground_truth/scratch/s2.png");    // tolerated naming
  image(d / "ground_truth/good/g1_mask.png");  // never used: good images have no defect

  const Dataset ds = scan_dataset(d);
  EXPECT_TRUE(ds.mvtec);
  EXPECT_EQ(names(ds.train), (std::vector<std::string>{"a.png", "b.png", "c.JPG"}));
  for (const auto& s : ds.train) {
    EXPECT_EQ(s.kind, "good");
    EXPECT_EQ(s.label, 0);
    EXPECT_FALSE(s.mask);
  }
  EXPECT_EQ(ds.train[0].image, d / "train/good/a.png");

  // Kinds in name order, images in name order within each kind.
  EXPECT_EQ(names(ds.test),
            (std::vector<std::string>{"c1.png", "g1.png", "s1.png", "s2.png", "s3.jpg"}));
  ASSERT_EQ(ds.test.size(), 5u);
  EXPECT_EQ(ds.test[0].kind, "crack");
  EXPECT_EQ(ds.test[0].label, 1);
  EXPECT_FALSE(ds.test[0].mask);
  EXPECT_EQ(ds.test[1].kind, "good");
  EXPECT_EQ(ds.test[1].label, 0);
  EXPECT_FALSE(ds.test[1].mask);
  EXPECT_EQ(ds.test[2].kind, "scratch");
  EXPECT_EQ(ds.test[2].label, 1);
  EXPECT_EQ(ds.test[2].mask, d / "ground_truth/scratch/s1_mask.png");
  EXPECT_EQ(ds.test[3].mask, d / "ground_truth/scratch/s2.png");
  EXPECT_FALSE(ds.test[4].mask);
}

TEST(Dataset, MvtecWithoutTestFolder) {
  TempDir t;
  image(t / "train/good/x.png");
  const Dataset ds = scan_dataset(t.path());
  EXPECT_TRUE(ds.mvtec);
  EXPECT_EQ(ds.train.size(), 1u);
  EXPECT_TRUE(ds.test.empty());
}

TEST(Dataset, PlainFolder) {
  TempDir t;
  const fs::path d = t.path();
  image(d / "z.png");
  image(d / "A.jpeg");
  image(d / "m.bmp");
  image(d / "m_mask.png");
  image(d / "sub/inner.png");  // only images directly in the folder
  write_bytes(d / "readme.md", "x");
  const Dataset ds = scan_dataset(d);
  EXPECT_FALSE(ds.mvtec);
  EXPECT_EQ(names(ds.train), (std::vector<std::string>{"A.jpeg", "m.bmp", "z.png"}));
  for (const auto& s : ds.train) {
    EXPECT_EQ(s.kind, "");
    EXPECT_EQ(s.label, -1);
    EXPECT_FALSE(s.mask);
  }
  EXPECT_TRUE(ds.test.empty());
}

TEST(Dataset, ListImagesFiltersAndSorts) {
  TempDir t;
  for (const char* n : {"b.TIFF", "a.tif", "c.webp", "d.png", "d_mask.png", "e.gif", "f.jpg.txt"})
    write_bytes(t / n, "x");
  std::vector<std::string> got;
  for (const auto& p : patchcore::list_images(t.path())) got.push_back(p.filename().string());
  EXPECT_EQ(got, (std::vector<std::string>{"a.tif", "b.TIFF", "c.webp", "d.png"}));
}

TEST(Dataset, Errors) {
  TempDir t;
  EXPECT_NE(expect_bad_input(t / "missing").find("no such folder"), std::string::npos);
  write_bytes(t / "file.png", "x");
  EXPECT_NE(expect_bad_input(t / "file.png").find("not a folder"), std::string::npos);

  fs::create_directory(t / "empty");
  write_bytes(t / "empty/notes.txt", "x");
  const std::string msg = expect_bad_input(t / "empty");
  EXPECT_NE(msg.find("no images in"), std::string::npos) << msg;
  EXPECT_NE(msg.find(".png"), std::string::npos) << msg;

  fs::create_directories(t / "mvtec/train/good");
  image(t / "mvtec/test/good/x.png");
  EXPECT_NE(expect_bad_input(t / "mvtec").find("train/good"), std::string::npos);

  fs::create_directories(t / "half/train/bad");
  EXPECT_NE(expect_bad_input(t / "half").find("train/good"), std::string::npos);
}

TEST(Dataset, DeterministicOrder) {
  TempDir t;
  for (int i = 20; i > 0; --i) image(t / ("img" + std::to_string(i * 7 % 23) + ".png"));
  const auto a = scan_dataset(t.path());
  const auto b = scan_dataset(t.path());
  ASSERT_EQ(a.train.size(), 20u);
  EXPECT_EQ(names(a.train), names(b.train));
  EXPECT_TRUE(std::is_sorted(a.train.begin(), a.train.end(), [](const auto& x, const auto& y) {
    return x.image.filename().string() < y.image.filename().string();
  }));
}

TEST(Dataset, MagneticTile) {
  const fs::path data = patchcore::testing::shared_data_dir();
  if (data.empty() || !fs::is_directory(data / "magnetic_tile")) GTEST_SKIP() << "no shared data";
  const Dataset ds = scan_dataset(data / "magnetic_tile");
  EXPECT_TRUE(ds.mvtec);
  EXPECT_EQ(ds.train.size(), 794u);
  std::map<std::string, int> count, masks;
  for (const auto& s : ds.test) {
    ++count[s.kind];
    if (s.mask) {
      ++masks[s.kind];
      EXPECT_TRUE(fs::is_regular_file(*s.mask));
      EXPECT_EQ(s.mask->filename().string(), s.image.stem().string() + "_mask.png");
    }
    EXPECT_EQ(s.label, s.kind == "good" ? 0 : 1);
  }
  const std::map<std::string, int> expected = {{"blowhole", 115}, {"break", 85},   {"crack", 57},
                                               {"fray", 32},      {"uneven", 103}, {"good", 158}};
  EXPECT_EQ(count, expected);
  std::map<std::string, int> expected_masks = expected;
  expected_masks.erase("good");
  EXPECT_EQ(masks, expected_masks);

  // The first image of each kind decodes (no false "truncated" on real JPEGs).
  EXPECT_EQ(patchcore::load_rgb(ds.train.front().image).type(), CV_8UC3);
  EXPECT_EQ(patchcore::load_mask(*ds.test.front().mask, 64).type(), CV_8UC1);
}

TEST(Dataset, HeiMed) {
  const fs::path data = patchcore::testing::shared_data_dir();
  if (data.empty() || !fs::is_directory(data / "hei_med")) GTEST_SKIP() << "no shared data";
  const Dataset ds = scan_dataset(data / "hei_med");
  EXPECT_TRUE(ds.mvtec);
  EXPECT_EQ(ds.train.size(), 48u);
  std::map<std::string, int> count, masks;
  for (const auto& s : ds.test) {
    ++count[s.kind];
    if (s.mask) ++masks[s.kind];
  }
  EXPECT_EQ(count,
            (std::map<std::string, int>{{"exudate", 54}, {"good", 20}, {"other_lesion", 47}}));
  EXPECT_EQ(masks, (std::map<std::string, int>{{"exudate", 54}, {"other_lesion", 47}}));
}
