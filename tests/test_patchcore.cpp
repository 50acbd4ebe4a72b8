// The public Model API on generated data: fit, predict, save, load.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <thread>

#include "dataset.h"
#include "overlay.h"
#include "patchcore/patchcore.h"
#include "synthetic.h"
#include "test_support.h"

namespace fs = std::filesystem;
using patchcore::testing::TempDir;

namespace {

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (patchcore::testing::built_backbones_dir().empty())
      GTEST_SKIP() << "build/backbones missing: run scripts/setup";
    patchcore::SyntheticParams sp;
    sp.size = 128;
    sp.n_train = 14;
    sp.n_test_good = 4;
    sp.n_per_defect = 3;
    patchcore::write_synthetic_dataset(tmp_.path(), sp);
    data_ = patchcore::scan_dataset(tmp_.path());
    for (const auto& s : data_.train) train_.push_back(s.image);
    params_.backbone = "mobilenet_v2";
    params_.image_size = 160;
    params_.coreset_ratio = 0.1;
    params_.coreset_min = 0;  // these few images would otherwise keep every patch
    params_.threads = 2;
  }
  TempDir tmp_;
  patchcore::Dataset data_;
  std::vector<fs::path> train_;
  patchcore::Params params_;
};

TEST_F(ModelTest, DefectsScoreAboveNormalImagesAndMapsPointAtThem) {
  std::vector<std::string> stages;
  patchcore::Callbacks cb;
  cb.progress = [&](const std::string& stage, int64_t done, int64_t total) {
    EXPECT_LE(done, total);
    if (stages.empty() || stages.back() != stage) stages.push_back(stage);
  };
  patchcore::Model model = patchcore::Model::fit(train_, params_, cb);
  EXPECT_NE(std::find(stages.begin(), stages.end(), "features"), stages.end());
  EXPECT_NE(std::find(stages.begin(), stages.end(), "coreset"), stages.end());
  EXPECT_EQ(model.map_size(), 160);

  std::vector<double> good, defect;
  for (const auto& s : data_.test) {
    patchcore::Prediction p = model.predict(s.image);
    ASSERT_EQ(p.map.height, 160);
    ASSERT_EQ(p.map.values.size(), 160u * 160u);
    EXPECT_EQ(p.image_height, 128);
    EXPECT_GE(p.normalized_score, 0.0);
    EXPECT_LE(p.normalized_score, 1.0);
    // The image score is the maximum patch score; the blurred map never exceeds it.
    const float map_max = *std::max_element(p.map.values.begin(), p.map.values.end());
    EXPECT_LE(map_max, p.score * 1.0001 + 1e-6);
    (s.label == 0 ? good : defect).push_back(p.score);
  }
  // Painted defects on a regular texture: nearly every (defect, normal) pair is ranked right.
  int right = 0;
  for (double d : defect)
    for (double g : good) right += d > g;
  EXPECT_GE(right, 0.9 * static_cast<double>(defect.size() * good.size()));
}

TEST_F(ModelTest, HeldOutImagesSetAThresholdAboveNormalScores) {
  patchcore::Model model = patchcore::Model::fit(train_, params_);
  const patchcore::Calibration& c = model.calibration();
  EXPECT_EQ(c.source, "holdout");
  EXPECT_GT(c.image_threshold, 0);
  EXPECT_LT(c.min_score, c.image_threshold);
  int flagged = 0;
  for (const auto& s : data_.test)
    if (s.label == 0 && model.predict(s.image).anomalous) ++flagged;
  EXPECT_LE(flagged, 1) << "the held-out threshold should let normal images pass";
}

TEST_F(ModelTest, SaveLoadRoundTripGivesIdenticalPredictions) {
  patchcore::Model model = patchcore::Model::fit(train_, params_);
  const fs::path file = tmp_ / "m.patchcore";
  model.save(file);
  patchcore::Model loaded = patchcore::Model::load(file);
  EXPECT_EQ(loaded.info_json(), model.info_json());
  const fs::path img = data_.test.back().image;
  patchcore::Prediction a = model.predict(img), b = loaded.predict(img);
  EXPECT_DOUBLE_EQ(a.score, b.score);
  EXPECT_EQ(a.map.values, b.map.values);
}

TEST_F(ModelTest, FitIsReproducibleForASeed) {
  patchcore::Model a = patchcore::Model::fit(train_, params_);
  patchcore::Model b = patchcore::Model::fit(train_, params_);
  const fs::path img = data_.test.front().image;
  EXPECT_DOUBLE_EQ(a.predict(img).score, b.predict(img).score);
  EXPECT_DOUBLE_EQ(a.calibration().image_threshold, b.calibration().image_threshold);
}

TEST_F(ModelTest, FitSkipsUnreadableTrainingImagesInAnyBatch) {
  // Unreadable files in the first, a middle and the last batch (of 3): the bank, filled batch
  // by batch, must hold exactly the readable images' patches, as if the others were never
  // listed. Without held-out images nothing else depends on the list.
  params_.holdout_fraction = 0;
  params_.batch_size = 3;
  std::vector<fs::path> with_bad = train_;
  for (int at : {0, 7, static_cast<int>(with_bad.size())}) {
    const fs::path bad = tmp_ / ("bad" + std::to_string(at) + ".png");
    patchcore::testing::write_bytes(bad, "\x89PNG\r\n truncated");
    with_bad.insert(with_bad.begin() + at, bad);
  }
  std::vector<std::string> logs;
  patchcore::Callbacks cb;
  cb.log = [&](patchcore::LogLevel, const std::string& m) { logs.push_back(m); };
  const patchcore::Model a = patchcore::Model::fit(with_bad, params_, cb);
  const patchcore::Model b = patchcore::Model::fit(train_, params_);
  EXPECT_EQ(std::count_if(logs.begin(), logs.end(),
                          [](const std::string& m) { return m.find("bad") != std::string::npos; }),
            3);
  for (const auto& sample : data_.test) {
    const patchcore::Prediction pa = a.predict(sample.image), pb = b.predict(sample.image);
    EXPECT_EQ(pa.score, pb.score) << sample.image;
    EXPECT_EQ(pa.map.values, pb.map.values) << sample.image;
  }
  EXPECT_EQ(a.calibration().image_threshold, b.calibration().image_threshold);
}

TEST_F(ModelTest, BatchPredictionSkipsUnreadableImagesAndReportsThem) {
  patchcore::Model model = patchcore::Model::fit(train_, params_);
  const fs::path bad = tmp_ / "bad.jpg";
  patchcore::testing::write_bytes(bad, "\xff\xd8\xff\xe0 truncated");
  std::vector<std::string> logs;
  patchcore::Callbacks cb;
  cb.log = [&](patchcore::LogLevel, const std::string& m) { logs.push_back(m); };
  auto preds = model.predict({data_.test[0].image, bad, data_.test[1].image}, cb);
  ASSERT_EQ(preds.size(), 2u);
  EXPECT_EQ(preds[0].path, data_.test[0].image);
  EXPECT_EQ(preds[1].path, data_.test[1].image);
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_NE(logs[0].find("bad.jpg"), std::string::npos);
  EXPECT_THROW(model.predict(bad), patchcore::Error);
}

TEST_F(ModelTest, CoresetMinimumFloorsTheBankSize) {
  auto bank_rows = [](const patchcore::Model& m) {
    return nlohmann::json::parse(m.info_json()).at("memory_bank").at("rows").get<int64_t>();
  };
  patchcore::Params p = params_;
  p.coreset_ratio = 0.01;
  const int64_t by_ratio = bank_rows(patchcore::Model::fit(train_, p));
  p.coreset_min = 500;
  ASSERT_LT(by_ratio, 500);
  EXPECT_EQ(bank_rows(patchcore::Model::fit(train_, p)), 500);
  p.coreset_min = 100000000;  // more than there are patches: every patch is kept
  const patchcore::Model all = patchcore::Model::fit(train_, p);
  const auto grid = nlohmann::json::parse(all.info_json()).at("grid");
  EXPECT_EQ(bank_rows(all),
            static_cast<int64_t>(train_.size()) * grid[0].get<int64_t>() * grid[1].get<int64_t>());
}

TEST_F(ModelTest, AutomaticIntensityStandardizesOnlyWhenExposureVaries) {
  auto intensity = [](const patchcore::Model& m) {
    return nlohmann::json::parse(m.info_json()).at("params").at("intensity").get<std::string>();
  };
  EXPECT_EQ(params_.intensity, patchcore::Intensity::automatic);  // the default
  // The synthetic training images share one exposure.
  EXPECT_EQ(intensity(patchcore::Model::fit(train_, params_)), "keep");
  // Half of them darkened to 60 %: a spread of 0.2 in mean brightness.
  std::vector<fs::path> varied;
  for (size_t i = 0; i < train_.size(); ++i) {
    cv::Mat img = cv::imread(train_[i].string());
    if (i % 2) img.convertTo(img, -1, 0.6);
    varied.push_back(tmp_.path() / ("varied_" + std::to_string(i) + ".png"));
    ASSERT_TRUE(cv::imwrite(varied.back().string(), img));
  }
  const patchcore::Model m = patchcore::Model::fit(varied, params_);
  EXPECT_EQ(intensity(m), "standardize");
  EXPECT_EQ(m.params().intensity, patchcore::Intensity::standardize);
  // Explicit choices are kept as given.
  patchcore::Params p = params_;
  p.intensity = patchcore::Intensity::keep;
  EXPECT_EQ(intensity(patchcore::Model::fit(varied, p)), "keep");
}

TEST_F(ModelTest, InvalidParametersAreUsageErrors) {
  patchcore::Params p = params_;
  p.coreset_ratio = 0;
  try {
    patchcore::Model::fit(train_, p);
    FAIL();
  } catch (const patchcore::Error& e) {
    EXPECT_EQ(e.kind(), patchcore::ErrorKind::usage);
  }
  p = params_;
  p.coreset_min = -1;
  EXPECT_THROW(patchcore::Model::fit(train_, p), patchcore::Error);
  p = params_;
  p.backbone = "no_such_backbone";
  EXPECT_THROW(patchcore::Model::fit(train_, p), patchcore::Error);
  EXPECT_THROW(patchcore::Model::fit(std::vector<fs::path>{}, params_), patchcore::Error);
}

}  // namespace

namespace {

// The file's pixels as the public API reads them (RGB, packed rows).
patchcore::Image read_png(const fs::path& file) { return patchcore::load_image(file); }

void expect_same_prediction(const patchcore::Prediction& a, const patchcore::Prediction& b) {
  EXPECT_NEAR(a.score, b.score, 1e-6 * std::max(1.0, std::abs(a.score)));
  EXPECT_NEAR(a.normalized_score, b.normalized_score, 1e-6);
  EXPECT_EQ(a.anomalous, b.anomalous);
  EXPECT_EQ(a.image_height, b.image_height);
  EXPECT_EQ(a.image_width, b.image_width);
  ASSERT_EQ(a.map.values.size(), b.map.values.size());
  for (size_t i = 0; i < a.map.values.size(); i += 97)
    EXPECT_NEAR(a.map.values[i], b.map.values[i], 1e-5 * std::max(1.0f, std::abs(a.map.values[i])));
}

}  // namespace

TEST_F(ModelTest, PixelsInMemoryScoreAsTheirFile) {
  patchcore::Model model = patchcore::Model::fit(train_, params_);
  const fs::path file = data_.test.back().image;  // a defect
  const patchcore::Prediction from_file = model.predict(file);
  const patchcore::Image img = read_png(file);
  ASSERT_EQ(img.pixels.size(), static_cast<size_t>(img.height) * img.width * 3);

  patchcore::ImageView view = img.view();
  view.name = "request input 0";
  const patchcore::Prediction from_view = model.predict(view);
  EXPECT_EQ(from_view.path, fs::path("request input 0"));
  expect_same_prediction(from_view, from_file);

  // Rows with padding between them, and RGBA with the alpha ignored.
  std::vector<uint8_t> padded(static_cast<size_t>(img.height) * (img.width * 4 + 5), 7);
  std::vector<uint8_t> strided(static_cast<size_t>(img.height) * (img.width * 3 + 13), 9);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      for (int c = 0; c < 4; ++c) {
        const uint8_t v = c < 3 ? img.pixels[(static_cast<size_t>(y) * img.width + x) * 3 + c]
                                : static_cast<uint8_t>(x);
        padded[static_cast<size_t>(y) * (img.width * 4 + 5) + x * 4 + c] = v;
        if (c < 3) strided[static_cast<size_t>(y) * (img.width * 3 + 13) + x * 3 + c] = v;
      }
  expect_same_prediction(
      model.predict(patchcore::ImageView{padded.data(), img.height, img.width, 4,
                                         img.width * 4 + 5, "rgba"}),
      from_file);
  expect_same_prediction(
      model.predict(patchcore::ImageView{strided.data(), img.height, img.width, 3,
                                         img.width * 3 + 13, "strided"}),
      from_file);

  // Encoded bytes, as over a network.
  const std::string bytes = patchcore::testing::read_bytes(file);
  const patchcore::Image decoded = patchcore::decode_image(
      reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "upload", 1 << 20);
  EXPECT_EQ(decoded.pixels, img.pixels);
  expect_same_prediction(model.predict(decoded.view()), from_file);

  // A batch of views gives what single calls give, in order.
  std::vector<patchcore::ImageView> views;
  std::vector<patchcore::Image> images;
  for (const auto& s : data_.test) images.push_back(read_png(s.image));
  for (const auto& i : images) views.push_back(i.view());
  const std::vector<patchcore::Prediction> batch = model.predict(views);
  ASSERT_EQ(batch.size(), data_.test.size());
  for (size_t i = 0; i < batch.size(); i += 3)
    expect_same_prediction(batch[i], model.predict(data_.test[i].image));
}

TEST_F(ModelTest, InvalidViewsAreRefusedNamingThem) {
  patchcore::Model model = patchcore::Model::fit(train_, params_);
  std::vector<uint8_t> px(64 * 64 * 3, 100);
  auto refuse = [&](patchcore::ImageView v, const std::string& why) {
    const std::string msg =
        patchcore::testing::expect_bad_input_naming("input 3", [&] { model.predict(v); });
    EXPECT_NE(msg.find(why), std::string::npos) << msg;
  };
  refuse({px.data(), 0, 64, 3, 0, "input 3"}, "empty image");
  refuse({px.data(), 64, 64, 2, 0, "input 3"}, "channels");
  refuse({px.data(), 64, 64, 3, 100, "input 3"}, "stride");
  refuse({nullptr, 64, 64, 3, 0, "input 3"}, "no pixel data");
  // In a batch, the invalid view is named and nothing is predicted.
  std::vector<patchcore::ImageView> batch{{px.data(), 64, 64, 3, 0, "input 0"},
                                          {px.data(), 64, 64, 5, 0, "input 3"}};
  patchcore::testing::expect_bad_input_naming("input 3", [&] { model.predict(batch); });
}

TEST_F(ModelTest, ImageMapHasTheImagesSize) {
  patchcore::Model model = patchcore::Model::fit(train_, params_);
  const patchcore::Image img = read_png(data_.test.back().image);
  cv::Mat wide;  // a non-square image: the map is stretched back to its own shape
  cv::resize(cv::Mat(img.height, img.width, CV_8UC3, const_cast<uint8_t*>(img.pixels.data())),
             wide, cv::Size(200, 90));
  const patchcore::Prediction p = model.predict(
      patchcore::ImageView{wide.data, wide.rows, wide.cols, 3, static_cast<int64_t>(wide.step),
                           "wide"});
  const patchcore::AnomalyMap m = model.image_map(p);
  EXPECT_EQ(m.height, 90);
  EXPECT_EQ(m.width, 200);
  ASSERT_EQ(m.values.size(), 90u * 200u);
  // Bilinear resampling keeps values within the S x S map's range.
  const auto [lo, hi] = std::minmax_element(p.map.values.begin(), p.map.values.end());
  for (float v : m.values) {
    EXPECT_GE(v, *lo - 1e-4f);
    EXPECT_LE(v, *hi + 1e-4f);
  }
  patchcore::Prediction foreign = p;
  foreign.map.height = 7;
  EXPECT_THROW(model.image_map(foreign), patchcore::Error);
}

TEST_F(ModelTest, FitOnPixelsInMemoryEqualsFitOnTheirFiles) {
  std::vector<patchcore::Image> images;
  for (const fs::path& f : train_) images.push_back(read_png(f));
  std::vector<patchcore::ImageView> views;
  for (const auto& i : images) views.push_back(i.view());
  patchcore::Model from_views = patchcore::Model::fit(views, params_);
  patchcore::Model from_files = patchcore::Model::fit(train_, params_);
  EXPECT_EQ(from_views.calibration().image_threshold, from_files.calibration().image_threshold);
  for (size_t i = 0; i < data_.test.size(); i += 4)
    expect_same_prediction(from_views.predict(data_.test[i].image),
                           from_files.predict(data_.test[i].image));
  views[3].channels = 7;
  views[3].name = "array 3";
  patchcore::testing::expect_bad_input_naming("array 3",
                                              [&] { patchcore::Model::fit(views, params_); });
}

namespace {

// What one prediction job returns, for an exact comparison with the serial run.
std::vector<patchcore::Prediction> run_job(const patchcore::Model& model, int kind, size_t i,
                                           const std::vector<fs::path>& paths,
                                           const std::vector<patchcore::ImageView>& views) {
  switch (kind) {
    case 0:
      return {model.predict(paths[i])};
    case 1:
      return {model.predict(views[i])};
    case 2:
      return model.predict(paths);
    default:
      return model.predict(views);
  }
}

// Differences between two runs of a job, empty when they are bit-identical.
std::string difference(const std::vector<patchcore::Prediction>& a,
                       const std::vector<patchcore::Prediction>& b) {
  if (a.size() != b.size()) return "sizes differ";
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].path != b[i].path) return "path of " + a[i].path.string();
    if (a[i].score != b[i].score || a[i].normalized_score != b[i].normalized_score ||
        a[i].anomalous != b[i].anomalous)
      return "score of " + a[i].path.string();
    if (a[i].map.values != b[i].map.values) return "map of " + a[i].path.string();
    if (a[i].image_height != b[i].image_height || a[i].image_width != b[i].image_width)
      return "size of " + a[i].path.string();
  }
  return "";
}

}  // namespace

// One const model, 8 threads of mixed predictions (single paths and views, batches of each) on
// both engines with the threads left at 0 (shared cores): every result is the serial run's, and
// the caller's OpenMP and OpenCV thread counts are as they were.
TEST_F(ModelTest, ConstModelGivesSerialResultsToEightThreadsAtOnce) {
  patchcore::Model fitted = patchcore::Model::fit(train_, params_);
  std::vector<fs::path> paths;
  std::vector<patchcore::Image> images;
  std::vector<patchcore::ImageView> views;
  for (const auto& s : data_.test) {
    paths.push_back(s.image);
    images.push_back(read_png(s.image));
  }
  for (const auto& img : images) views.push_back(img.view());
  fitted.set_threads(0);
  omp_set_num_threads(1);
  const int opencv_threads = cv::getNumThreads();
  for (const auto engine : {patchcore::BackboneEngine::dnnl, patchcore::BackboneEngine::opencv}) {
    fitted.set_engine(engine);
    const patchcore::Model& model = fitted;
    // Every (kind, image) job, run serially first.
    std::vector<std::pair<int, size_t>> jobs;
    for (int kind = 0; kind < 4; ++kind)
      for (size_t i = 0; i < (kind < 2 ? paths.size() : 1); ++i) jobs.emplace_back(kind, i);
    std::vector<std::vector<patchcore::Prediction>> serial;
    for (const auto& [kind, i] : jobs) serial.push_back(run_job(model, kind, i, paths, views));

    constexpr int kThreads = 8;
    std::vector<std::vector<std::string>> failures(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        // Each thread its own mix: every 3rd job from its own starting point.
        for (size_t j = static_cast<size_t>(t); j < jobs.size() + t; j += 3) {
          const size_t at = j % jobs.size();
          const auto& [kind, i] = jobs[at];
          try {
            const std::string d = difference(run_job(model, kind, i, paths, views), serial[at]);
            if (!d.empty()) failures[t].push_back("job " + std::to_string(at) + ": " + d);
          } catch (const std::exception& e) {
            failures[t].push_back("job " + std::to_string(at) + " threw: " + e.what());
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t)
      for (const std::string& f : failures[t]) ADD_FAILURE() << "thread " << t << ", " << f;
    EXPECT_EQ(model.backbone_engine(),
              engine == patchcore::BackboneEngine::dnnl ? "dnnl" : "opencv");
    // The small bank is searched by the bf16 screen where it pays: one matmul primitive shared
    // by every thread.
    EXPECT_EQ(model.knn_search(),
              patchcore::dnnl_isa() == "avx512_core_amx" ? "bf16 screen" : "brute force");
  }
  EXPECT_EQ(omp_get_max_threads(), 1);
  EXPECT_EQ(cv::getNumThreads(), opencv_threads);
}

// The public pictures are overlay.h's on the prediction's image map, in RGB; write_image writes
// what load_image reads back.
TEST_F(ModelTest, OverlayAndMaskOfAPredictionAndWritingImages) {
  patchcore::Model model = patchcore::Model::fit(train_, params_);
  const fs::path file = data_.test.back().image;
  const patchcore::Image img = read_png(file);
  const patchcore::Prediction p = model.predict(img.view());
  const patchcore::AnomalyMap m = model.image_map(p);
  cv::Mat map(m.height, m.width, CV_32F, const_cast<float*>(m.values.data()));

  const patchcore::Image overlay = patchcore::heatmap_overlay(model, p, img.view());
  EXPECT_EQ(overlay.channels, 3);
  ASSERT_EQ(overlay.height, img.height);
  ASSERT_EQ(overlay.width, img.width);
  cv::Mat rgb(img.height, img.width, CV_8UC3, const_cast<uint8_t*>(img.pixels.data()));
  cv::Mat bgr = patchcore::heatmap_overlay(rgb, map, model.calibration()), expected;
  cv::cvtColor(bgr, expected, cv::COLOR_BGR2RGB);
  EXPECT_EQ(overlay.pixels,
            std::vector<uint8_t>(expected.data, expected.data + expected.total() * 3));

  const patchcore::Image mask = patchcore::predicted_mask(model, p);
  EXPECT_EQ(mask.channels, 1);
  ASSERT_EQ(mask.pixels.size(), m.values.size());
  for (size_t i = 0; i < m.values.size(); ++i)
    ASSERT_EQ(mask.pixels[i], m.values[i] >= model.calibration().pixel_threshold ? 255 : 0) << i;

  // Another image's size is refused.
  patchcore::Image small = img;
  small.height = img.height / 2;
  EXPECT_THROW(patchcore::heatmap_overlay(model, p, small.view()), patchcore::Error);

  patchcore::write_image(tmp_ / "out" / "overlay.png", overlay.view());
  EXPECT_EQ(patchcore::load_image(tmp_ / "out" / "overlay.png").pixels, overlay.pixels);
  patchcore::write_image(tmp_ / "mask.png", mask.view());
  const cv::Mat grey = cv::imread((tmp_ / "mask.png").string(), cv::IMREAD_UNCHANGED);
  ASSERT_EQ(grey.type(), CV_8UC1);
  EXPECT_EQ(std::vector<uint8_t>(grey.data, grey.data + grey.total()), mask.pixels);
  patchcore::testing::expect_bad_input_naming(
      "nothing.xyz", [&] { patchcore::write_image(tmp_ / "nothing.xyz", mask.view()); });
}

TEST(OpenCvThreads, SetOnlyWhenAskedAndNeverNegative) {
  const int before = cv::getNumThreads();
  patchcore::set_opencv_threads(1);
  EXPECT_EQ(cv::getNumThreads(), 1);
  EXPECT_THROW(patchcore::set_opencv_threads(-1), patchcore::Error);
  EXPECT_EQ(cv::getNumThreads(), 1);
  patchcore::set_opencv_threads(before);
}
