// Models that grow: Model::update, fit beyond memory (streamed features), shards and merge.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "dataset.h"
#include "metrics.h"
#include "model_file.h"
#include "patchcore/patchcore.h"
#include "synthetic.h"
#include "test_support.h"

namespace fs = std::filesystem;
using patchcore::Model;
using patchcore::testing::TempDir;

namespace {

std::vector<fs::path> train_of(const patchcore::Dataset& d) {
  std::vector<fs::path> out;
  for (const auto& s : d.train) out.push_back(s.image);
  return out;
}

double auroc_on(const Model& m, const std::vector<patchcore::Sample>& test) {
  std::vector<float> scores;
  std::vector<uint8_t> labels;
  for (const auto& s : test) {
    scores.push_back(static_cast<float>(m.predict(s.image).score));
    labels.push_back(static_cast<uint8_t>(s.label));
  }
  return patchcore::auroc(scores, labels).value();
}

// Two variants of one weave: A in the default beige, B in blue-grey (a new batch of material).
class GrowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (patchcore::testing::built_backbones_dir().empty())
      GTEST_SKIP() << "build/backbones missing: run scripts/setup";
    patchcore::SyntheticParams sp;
    sp.size = 112;
    sp.n_train = 12;
    sp.n_test_good = 12;
    sp.n_per_defect = 5;
    patchcore::write_synthetic_dataset(tmp_ / "a", sp);
    sp.seed = 2;
    sp.tint[0] = 1.0;
    sp.tint[1] = 0.75;
    sp.tint[2] = 0.45;
    patchcore::write_synthetic_dataset(tmp_ / "b", sp);
    a_ = patchcore::scan_dataset(tmp_ / "a");
    b_ = patchcore::scan_dataset(tmp_ / "b");
    params_.backbone = "mobilenet_v2";
    params_.image_size = 128;
    params_.coreset_ratio = 0.25;
    params_.coreset_min = 0;
    params_.threads = 2;
    // The comparisons with a fit on both sets hold to fp32's rounding, not bf16's.
    params_.precision = patchcore::Precision::fp32;
    // Automatic intensity would standardise a fit on both variants (their brightness differs)
    // and keep a fit on one: the comparisons below are about the bank, so both keep.
    params_.intensity = patchcore::Intensity::keep;
    params_.holdout_fraction = 0.25;  // 3 of 12 images: a threshold from more than one score
  }
  TempDir tmp_;
  patchcore::Dataset a_, b_;
  patchcore::Params params_;
};

TEST_F(GrowTest, UpdateWithTheTrainingImagesAddsAlmostNoRows) {
  Model m = Model::fit(train_of(a_), params_);
  const auto before = nlohmann::json::parse(m.info_json());
  ASSERT_GT(before["coverage"]["radius"].get<double>(), 0.0);
  const int64_t rows = before["memory_bank"]["rows"].get<int64_t>();
  const int64_t patches = before["coverage"]["patches"].get<int64_t>();
  const int64_t added = m.update(train_of(a_));
  EXPECT_LE(added, patches / 1000 + 1) << "of " << patches << " patches";
  const auto after = nlohmann::json::parse(m.info_json());
  EXPECT_EQ(after["memory_bank"]["rows"].get<int64_t>(), rows + added);
  ASSERT_EQ(after["history"].size(), 2u);
  EXPECT_EQ(after["history"][0]["action"], "fit");
  EXPECT_EQ(after["history"][1]["action"], "update");
  EXPECT_EQ(after["history"][1]["rows_added"].get<int64_t>(), added);
  EXPECT_EQ(after["history"][1]["images"].get<int>(), 12);
}

// Normal images flagged and defects caught, per variant.
struct Flagged {
  int normal = 0, normals = 0, defect = 0, defects = 0;
};
Flagged flagged(const Model& m, const std::vector<patchcore::Sample>& test) {
  Flagged f;
  for (const auto& s : test) {
    const bool hit = m.predict(s.image).anomalous;
    (s.label == 0 ? f.normal : f.defect) += hit ? 1 : 0;
    ++(s.label == 0 ? f.normals : f.defects);
  }
  return f;
}

TEST_F(GrowTest, UpdateWithANewVariantBringsItBelowTheThresholdAndDefectsStayAbove) {
  Model m = Model::fit(train_of(a_), params_);
  const Flagged a_before = flagged(m, a_.test), b_before = flagged(m, b_.test);
  EXPECT_GE(b_before.normal, b_before.normals * 3 / 4) << "variant B must look anomalous to A";

  const int64_t added = m.update(train_of(b_));
  EXPECT_GT(added, 50);
  const Flagged a_after = flagged(m, a_.test), b_after = flagged(m, b_.test);
  // B's normal images now pass, A's still do (one of 12 may sit at the threshold)...
  EXPECT_LE(b_after.normal, 1) << "of " << b_after.normals;
  EXPECT_LE(a_after.normal, std::max(1, a_before.normal));
  // ... and defects are caught as often as the model of A alone caught A's (the threshold
  // sits above every held-out score, so small defects on 112 px images pass either way).
  EXPECT_GE(b_after.defect, a_before.defect - 1) << "of " << b_after.defects;
  EXPECT_GE(a_after.defect, a_before.defect - 1) << "of " << a_after.defects;
  EXPECT_GE(a_before.defect, a_before.defects / 2);
}

TEST_F(GrowTest, FitOnAThenUpdateWithBScoresLikeAFitOnBoth) {
  std::vector<fs::path> both = train_of(a_);
  for (const auto& p : train_of(b_)) both.push_back(p);
  const Model joint = Model::fit(both, params_);
  Model grown = Model::fit(train_of(a_), params_);
  grown.update(train_of(b_));
  std::vector<patchcore::Sample> test = a_.test;
  test.insert(test.end(), b_.test.begin(), b_.test.end());
  const double joint_auroc = auroc_on(joint, test), grown_auroc = auroc_on(grown, test);
  EXPECT_NEAR(grown_auroc, joint_auroc, 0.01);
  EXPECT_GT(joint_auroc, 0.8);
}

TEST_F(GrowTest, UpdateSurvivesSaveAndLoadAndAnOlderModelNeedsARadius) {
  Model m = Model::fit(train_of(a_), params_);
  const fs::path file = tmp_ / "m.patchcore";
  m.save(file);
  Model loaded = Model::load(file);
  EXPECT_EQ(loaded.info_json(), m.info_json());

  // A model from before update existed: no coverage, history or held-out scores.
  patchcore::ModelFileContents c = patchcore::read_model_file(file);
  c.metadata.erase("coverage");
  c.metadata.erase("history");
  c.f32.erase("holdout_scores");
  c.f32.erase("holdout_pixels");
  const fs::path old_file = tmp_ / "old.patchcore";
  patchcore::write_model_file(old_file, c);
  Model old = Model::load(old_file);
  const std::string msg =
      patchcore::testing::expect_bad_input_naming(old_file, [&] { old.update(train_of(b_)); });
  EXPECT_NE(msg.find("radius"), std::string::npos) << msg;
  EXPECT_NE(msg.find("max_rows"), std::string::npos) << msg;
  patchcore::UpdateParams up;
  up.max_rows = 7;
  EXPECT_EQ(old.update(train_of(b_), up), 7);
  EXPECT_THROW(old.update(std::vector<fs::path>{}), patchcore::Error);
}

TEST_F(GrowTest, UpdateFromPixelsInMemoryEqualsUpdateFromTheirFiles) {
  Model from_files = Model::fit(train_of(a_), params_);
  Model from_views = Model::fit(train_of(a_), params_);
  std::vector<patchcore::Image> images;
  for (const auto& p : train_of(b_)) images.push_back(patchcore::load_image(p));
  std::vector<patchcore::ImageView> views;
  for (const auto& i : images) views.push_back(i.view());
  const int64_t added = from_files.update(train_of(b_));
  EXPECT_EQ(from_views.update(views), added);
  for (const auto& s : b_.test)
    EXPECT_EQ(from_views.predict(s.image).score, from_files.predict(s.image).score);
}

TEST_F(GrowTest, StreamedFitPicksWhatTheInMemoryFitPicks) {
  patchcore::Params p = params_;
  // One image per batch keeps the streamed fit's buffers small beside these few features:
  // 8 MB is below the in-memory fit's estimate and above the streamed one's.
  p.batch_size = 1;
  patchcore::Params in_memory_params = p;
  p.max_memory = 8 << 20;
  p.scratch_folder = tmp_ / "scratch";
  fs::create_directories(p.scratch_folder);
  std::vector<std::string> logs;
  patchcore::Callbacks cb;
  cb.log = [&](patchcore::LogLevel, const std::string& m) { logs.push_back(m); };
  const Model streamed = Model::fit(train_of(a_), p, cb);
  const Model in_memory = Model::fit(train_of(a_), in_memory_params);
  EXPECT_TRUE(std::any_of(logs.begin(), logs.end(), [](const std::string& m) {
    return m.find("streaming") != std::string::npos;
  }));
  // Everything but the history's times.
  auto a = nlohmann::json::parse(streamed.info_json()),
       b = nlohmann::json::parse(in_memory.info_json());
  a.erase("history");
  b.erase("history");
  EXPECT_EQ(a, b);
  for (const auto& s : a_.test)
    EXPECT_EQ(streamed.predict(s.image).score, in_memory.predict(s.image).score) << s.image;
  EXPECT_TRUE(fs::is_empty(p.scratch_folder)) << "the features file must not outlive the fit";
}

TEST_F(GrowTest, FitRefusesBeforeAnyWorkWhenEvenTheProjectedRowsDoNotFit) {
  patchcore::Params p = params_;
  p.max_memory = 64 << 10;
  const std::string msg = patchcore::testing::expect_bad_input_naming(
      "(training set)", [&] { Model::fit(train_of(a_), p); });
  EXPECT_NE(msg.find("shards"), std::string::npos) << msg;
  EXPECT_NE(msg.find("image_size"), std::string::npos) << msg;
}

TEST_F(GrowTest, ShardsMergeIntoAModelThatScoresLikeASingleFit) {
  std::vector<fs::path> both = train_of(a_);
  for (const auto& p : train_of(b_)) both.push_back(p);
  const Model single = Model::fit(both, params_);
  std::vector<Model> parts;
  for (int i = 0; i < 3; ++i) parts.push_back(Model::fit_shard(both, params_, {i, 3}));
  const auto part0 = nlohmann::json::parse(parts[0].info_json());
  EXPECT_EQ(part0["shard"]["count"], 3);
  EXPECT_DOUBLE_EQ(part0["params"]["coreset_ratio"].get<double>(), 2 * params_.coreset_ratio);
  const Model merged = Model::merge({&parts[0], &parts[1], &parts[2]});
  const auto j = nlohmann::json::parse(merged.info_json());
  const auto s = nlohmann::json::parse(single.info_json());
  EXPECT_EQ(j["memory_bank"]["rows"], s["memory_bank"]["rows"]);
  EXPECT_EQ(j["coverage"]["patches"], s["coverage"]["patches"]);
  EXPECT_EQ(j["holdout_images"].get<int>(), 6);  // a quarter of each shard of 8
  EXPECT_DOUBLE_EQ(j["params"]["coreset_ratio"].get<double>(), params_.coreset_ratio);
  std::vector<patchcore::Sample> test = a_.test;
  test.insert(test.end(), b_.test.begin(), b_.test.end());
  EXPECT_NEAR(auroc_on(merged, test), auroc_on(single, test), 0.01);
}

TEST_F(GrowTest, ShardAndMergeMistakesAreRefused) {
  EXPECT_THROW(Model::fit_shard(train_of(a_), params_, {3, 3}), patchcore::Error);
  try {
    const std::vector<fs::path> all = train_of(a_);
    Model::fit_shard({all[0], all[1]}, params_, {2, 3});
    ADD_FAILURE() << "an empty shard must be refused";
  } catch (const patchcore::Error& e) {
    EXPECT_EQ(e.kind(), patchcore::ErrorKind::bad_input);
  }
  const Model a = Model::fit(train_of(a_), params_);
  patchcore::Params other = params_;
  other.image_size = 96;
  const Model b = Model::fit(train_of(b_), other);
  EXPECT_THROW(Model::merge({&a, &b}), patchcore::Error);
}

}  // namespace
