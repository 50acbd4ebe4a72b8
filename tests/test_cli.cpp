// End-to-end: the patchcore binary on generated data, as a user or a script drives it.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <sstream>

#include "synthetic.h"
#include "test_support.h"

namespace fs = std::filesystem;
using patchcore::testing::read_bytes;
using patchcore::testing::CmdResult;
using patchcore::testing::run_cli;
using patchcore::testing::shell_quote;
using patchcore::testing::TempDir;
using patchcore::testing::write_bytes;

namespace {

// One small data set and one fitted model for the whole suite: fitting is the slow part.
class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (patchcore::testing::built_backbones_dir().empty()) return;
    tmp_ = new TempDir();
    patchcore::SyntheticParams p;
    p.size = 128;
    p.n_train = 16;
    p.n_test_good = 6;
    p.n_per_defect = 4;
    patchcore::write_synthetic_dataset(data(), p);
    fit_ = new CmdResult(
        run_cli(*tmp_, {"fit", "--data", data().string(), "--out", model().string(), "--backbone",
                    "mobilenet_v2", "--image-size", "160", "--coreset-ratio", "0.1"}));
  }
  static void TearDownTestSuite() {
    delete fit_;
    delete tmp_;
    fit_ = nullptr;
    tmp_ = nullptr;
  }
  void SetUp() override {
    if (!tmp_) GTEST_SKIP() << "build/backbones missing: run scripts/setup";
    ASSERT_EQ(fit_->code, 0) << fit_->err;
  }
  static fs::path data() { return tmp_->path() / "data"; }
  static fs::path model() { return tmp_->path() / "model.patchcore"; }
  static TempDir* tmp_;
  static CmdResult* fit_;
  TempDir local_;
};
TempDir* Cli::tmp_ = nullptr;
CmdResult* Cli::fit_ = nullptr;

TEST_F(Cli, FitWritesAModelThatInfoDescribes) {
  CmdResult r = run_cli(local_, {"info", model().string()});
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["format"], "patchcore");
  EXPECT_EQ(j["backbone"]["layers"][0], "block_5_expand_relu");
  EXPECT_EQ(j["params"]["image_size"], 160);
  EXPECT_GT(j["memory_bank"]["rows"].get<int>(), 0);
  EXPECT_EQ(j["calibration"]["source"], "holdout");
  EXPECT_GT(j["calibration"]["image_threshold"].get<double>(), 0);
  // No temporary file is left beside the model.
  for (const auto& e : fs::directory_iterator(tmp_->path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

// The AUROC `eval` reports for a model on the suite's data.
double eval_auroc(const TempDir& tmp, const fs::path& model, const fs::path& data,
                  const fs::path& out) {
  CmdResult r = run_cli(tmp, {"eval", "--model", model.string(), "--data", data.string(), "--out",
                          out.string(), "--no-images"});
  EXPECT_EQ(r.code, 0) << r.err;
  return nlohmann::json::parse(read_bytes(out / "metrics.json"))["image_auroc"].get<double>();
}

TEST_F(Cli, UpdateWritesANewModelAndLeavesTheOldOneUntouched) {
  const std::string before = read_bytes(model());
  const fs::path grown = local_ / "grown.patchcore";
  CmdResult r = run_cli(local_, {"update", "--model", model().string(), "--data", data().string(),
                             "--out", grown.string(), "--max-rows", "5"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_bytes(model()), before);
  CmdResult info = run_cli(local_, {"info", grown.string()});
  ASSERT_EQ(info.code, 0) << info.err;
  const auto j = nlohmann::json::parse(info.out);
  ASSERT_EQ(j["history"].size(), 2u);
  EXPECT_EQ(j["history"][1]["action"], "update");
  EXPECT_LE(j["history"][1]["rows_added"].get<int>(), 5);
  EXPECT_FALSE(j["history"][1]["time"].get<std::string>().empty());
  for (const auto& e : fs::directory_iterator(local_.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

TEST_F(Cli, UpdateAndMergeRefuseFoldersWithoutImagesNamingThem) {
  const fs::path empty = local_ / "empty";
  fs::create_directories(empty);
  CmdResult r = run_cli(local_, {"update", "--model", model().string(), "--data", empty.string(),
                             "--out", (local_ / "m.patchcore").string()});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find(empty.string()), std::string::npos) << r.err;
  r = run_cli(local_, {"merge", empty.string(), "--out", (local_ / "m.patchcore").string()});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find(empty.string()), std::string::npos) << r.err;
  r = run_cli(local_, {"fit", "--data", data().string(), "--out", (local_ / "m.patchcore").string(),
                   "--shard", "3/3"});
  EXPECT_EQ(r.code, 2) << r.err;
}

TEST_F(Cli, ThreeShardsFittedAsSeparateProcessesMergeIntoAModelAsGoodAsOneFit) {
  const std::vector<std::string> fit_args = {
      "--data", data().string(),   "--backbone", "mobilenet_v2",  "--image-size",
      "160",    "--coreset-ratio", "0.1",        "--coreset-min", "0"};
  const fs::path single = local_ / "single.patchcore";
  std::vector<std::string> args = {"fit", "--out", single.string()};
  args.insert(args.end(), fit_args.begin(), fit_args.end());
  ASSERT_EQ(run_cli(local_, args).code, 0);
  // Three processes at once, as a job array would run them.
  std::string script;
  for (int i = 0; i < 3; ++i) {
    script += shell_quote(std::string(PATCHCORE_BINARY_DIR) + "/patchcore") + " fit --shard " +
              std::to_string(i) + "/3 --out " +
              shell_quote((local_ / ("part" + std::to_string(i) + ".patchcore")).string());
    for (const auto& a : fit_args) {
      script += ' ';
      script += shell_quote(a);
    }
    script += " --threads 1 2>/dev/null >/dev/null & ";
  }
  script += "wait";
  const std::string command = std::string("bash -c ").append(shell_quote(script));
  ASSERT_EQ(std::system(command.c_str()), 0);
  const fs::path merged = local_ / "merged.patchcore";
  CmdResult r = run_cli(local_, {"merge", (local_ / "part0.patchcore").string(),
                             (local_ / "part1.patchcore").string(),
                             (local_ / "part2.patchcore").string(), "--out", merged.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["history"][0]["action"], "merge");
  EXPECT_EQ(j["history"][0]["images"].get<int>(), 16);
  EXPECT_NEAR(eval_auroc(local_, merged, data(), local_ / "em"),
              eval_auroc(local_, single, data(), local_ / "es"), 0.01);
}

TEST_F(Cli, FitBeyondMaxMemoryStreamsAndWritesTheSameModel) {
  const fs::path streamed = local_ / "streamed.patchcore";
  CmdResult r =
      run_cli(local_, {"fit", "--data", data().string(), "--out", streamed.string(), "--backbone",
                   "mobilenet_v2", "--image-size", "160", "--coreset-ratio", "0.1", "--coreset-min",
                   "0", "--max-memory", "12m", "--batch-size", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("streaming"), std::string::npos) << r.err;
  const fs::path in_memory = local_ / "memory.patchcore";
  r = run_cli(local_, {"fit", "--data", data().string(), "--out", in_memory.string(), "--backbone",
                   "mobilenet_v2", "--image-size", "160", "--coreset-ratio", "0.1", "--coreset-min",
                   "0", "--batch-size", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto a = nlohmann::json::parse(run_cli(local_, {"info", streamed.string()}).out);
  const auto b = nlohmann::json::parse(run_cli(local_, {"info", in_memory.string()}).out);
  EXPECT_EQ(a["memory_bank"], b["memory_bank"]);
  EXPECT_EQ(a["calibration"], b["calibration"]);
  EXPECT_EQ(a["coverage"], b["coverage"]);
  r = run_cli(local_, {"fit", "--data", data().string(), "--out", streamed.string(), "--backbone",
                   "mobilenet_v2", "--image-size", "160", "--max-memory", "100k"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("fit in shards"), std::string::npos) << r.err;
}

TEST_F(Cli, BenchReportsEveryStageAsJson) {
  CmdResult r = run_cli(local_, {"bench", "--data", data().string(), "--backbone", "mobilenet_v2",
                             "--image-size", "160", "--max-predict", "3", "--threads", "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["machine"]["sgemm_gflops"].get<double>(), 0.0);
  const std::string isa = j["machine"]["dnnl_isa"];
  EXPECT_FALSE(isa.empty());
  EXPECT_TRUE(j["machine"]["flags"].is_array());
  // auto: oneDNN runs every operator here; bf16 where the CPU has it
  EXPECT_EQ(j["backbone"]["engine"], "dnnl");
  const std::string precision = j["backbone"]["precision"];
  EXPECT_TRUE(precision == "fp32" || precision == "bf16") << precision;
  EXPECT_EQ(j["fit"]["images"].get<int>(), 16);
  for (const char* stage : {"decode", "backbone", "embedding", "coreset", "holdout"})
    EXPECT_GE(j["fit"]["stages"][stage]["seconds"].get<double>(), 0.0) << stage;
  EXPECT_EQ(j["fit"]["stages"]["holdout"]["items"].get<int>(), 2);  // 10 % of 16, rounded
  const auto& p = j["predict"];
  EXPECT_EQ(p["images"].get<int>(), 3);
  for (const char* stage : {"decode", "backbone", "embedding", "knn", "map"})
    EXPECT_EQ(p["stages"][stage]["items"].get<int>(), 3) << stage;
  // Which search ran follows from the bank (see KnnOptions), and says how much it measured.
  const int64_t rows = j["memory_bank"]["rows"].get<int64_t>();
  const int64_t dim = j["memory_bank"]["dim"].get<int64_t>();
  const bool bounded = rows >= 2048 && dim >= 512;
  const bool screened = !bounded && isa == "avx512_core_amx";  // bf16_screen_pays()
  EXPECT_EQ(p["knn_search"], bounded ? "bounded" : screened ? "bf16 screen" : "brute force");
  const double exact = p["knn_exact_rows_per_patch"].get<double>();
  if (bounded || screened) {
    EXPECT_GE(exact, 1.0);
    EXPECT_LE(exact, static_cast<double>(rows));
  } else {
    EXPECT_EQ(exact, 0.0);
    EXPECT_FALSE(p["knn_coarse_stage"].get<bool>());
  }
  EXPECT_GT(j["peak_rss_mb"].get<double>(), 0.0);

  // A bank too small for the bound: the bf16 screen where it pays, else FAISS.
  r = run_cli(local_, {"bench", "--data", data().string(), "--backbone", "mobilenet_v2",
                       "--image-size", "160", "--max-predict", "2", "--threads", "2",
                       "--coreset-min", "500"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto small = nlohmann::json::parse(r.out);
  EXPECT_EQ(small["memory_bank"]["rows"].get<int64_t>(), 500);
  EXPECT_EQ(small["predict"]["knn_search"],
            isa == "avx512_core_amx" ? "bf16 screen" : "brute force");
}

TEST_F(Cli, BenchComparesTheEnginesOnTheSameInput) {
  CmdResult r = run_cli(local_, {"bench", "--compare-engines", "2", "--backbone", "inception_v3",
                             "--image-size", "107", "--threads", "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["runs"].get<int>(), 2);
  for (const char* engine : {"dnnl_fp32", "opencv_fp32"}) {
    EXPECT_GT(j["engines"][engine]["median_ms"].get<double>(), 0.0) << engine;
    EXPECT_LE(j["engines"][engine]["min_ms"].get<double>(),
              j["engines"][engine]["median_ms"].get<double>())
        << engine;
  }
  // bf16 is measured where the CPU has it, and else says why not.
  EXPECT_NE(j["engines"].contains("dnnl_bf16"), j.contains("bf16_skipped"));
  for (const char* layer : {"mixed2", "mixed5"}) {
    EXPECT_LT(j["engines"]["dnnl_fp32"]["max_difference_over_max_value"][layer].get<double>(), 1e-5)
        << layer;
    if (j["engines"].contains("dnnl_bf16")) {
      const double d =
          j["engines"]["dnnl_bf16"]["max_difference_over_max_value"][layer].get<double>();
      EXPECT_GT(d, 1e-5) << layer;  // bf16 did run
      EXPECT_LT(d, 0.05) << layer;
    }
  }
  EXPECT_EQ(run_cli(local_, {"bench", "--threads", "2"}).code, 2);  // neither --data nor a comparison
}

TEST_F(Cli, EvalFindsTheDefectsAndWritesEverything) {
  const fs::path out = local_ / "eval";
  CmdResult r = run_cli(local_, {"eval", "--model", model().string(), "--data", data().string(),
                             "--out", out.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  auto m = nlohmann::json::parse(read_bytes(out / "metrics.json"));
  EXPECT_EQ(m["n_images"], 6 + 3 * 4);
  // Painted defects on a regular texture are easy: a working pipeline ranks them high.
  EXPECT_GT(m["image_auroc"].get<double>(), 0.9);
  EXPECT_GT(m["pixel_auroc"].get<double>(), 0.9);
  EXPECT_GT(m["aupro"].get<double>(), 0.5);
  for (const char* k : {"image_f1", "image_threshold", "per_kind"}) EXPECT_TRUE(m.contains(k));
  EXPECT_TRUE(m["per_kind"].contains("scratch"));
  const std::string csv = read_bytes(out / "predictions.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 6 + 3 * 4);
  EXPECT_TRUE(fs::exists(out / "report.html"));
  cv::Mat overlay = cv::imread((out / "images" / "spot" / "000.png").string());
  EXPECT_EQ(overlay.rows, 128);
  EXPECT_NE(r.out.find("image AUROC"), std::string::npos);
}

TEST_F(Cli, PredictPrintsOneJsonLinePerImageAndWritesHeatmaps) {
  const fs::path out = local_ / "pred";
  CmdResult r = run_cli(local_, {"predict", "--model", model().string(), "--out", out.string(),
                             (data() / "test" / "good" / "000.png").string(),
                             (data() / "test" / "spot").string()});
  ASSERT_EQ(r.code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line);
    EXPECT_TRUE(j.contains("score") && j.contains("normalized_score") && j.contains("label"));
    EXPECT_GE(j["normalized_score"].get<double>(), 0.0);
    EXPECT_LE(j["normalized_score"].get<double>(), 1.0);
    EXPECT_TRUE(fs::exists(j["heatmap"].get<std::string>()));
    ++n;
  }
  EXPECT_EQ(n, 1 + 4);
}

// Image scores of `predict` on the spot images with extra options, by path.
std::map<std::string, double> predict_scores(const TempDir& local, const fs::path& model,
                                             const fs::path& data,
                                             const std::vector<std::string>& options,
                                             std::string* err = nullptr) {
  std::vector<std::string> args{"predict", "--model", model.string()};
  args.insert(args.end(), options.begin(), options.end());
  args.push_back((data / "test" / "spot").string());
  CmdResult r = run_cli(local, args);
  EXPECT_EQ(r.code, 0) << r.err;
  if (err != nullptr) *err = r.err;
  std::map<std::string, double> scores;
  std::istringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line)) {
    const auto j = nlohmann::json::parse(line);
    scores[j["path"].get<std::string>()] = j["score"].get<double>();
  }
  return scores;
}

// Both engines score a model's images alike in fp32 (the features agree to float rounding),
// bf16 within its rounding, and an unknown engine or precision is a usage error.
TEST_F(Cli, PredictEnginesAgree) {
  const auto dnnl =
      predict_scores(local_, model(), data(), {"--engine", "dnnl", "--precision", "fp32"});
  const auto opencv = predict_scores(local_, model(), data(), {"--engine", "opencv"});
  const auto bf16 = predict_scores(local_, model(), data(), {"--precision", "bf16"});
  ASSERT_EQ(dnnl.size(), 4u);
  for (const auto& [path, s] : dnnl) {
    ASSERT_TRUE(opencv.count(path) && bf16.count(path)) << path;
    EXPECT_NEAR(s, opencv.at(path), 1e-4 * std::abs(s)) << path;
    // a model fitted in fp32 scored in bf16: measured 2.2 % apart here at most
    EXPECT_NEAR(s, bf16.at(path), 0.05 * std::abs(s)) << path;
  }
  const std::string dir = (data() / "test" / "spot").string();
  EXPECT_EQ(run_cli(local_, {"predict", "--model", model().string(), "--engine", "cuda", dir}).code, 2);
  EXPECT_EQ(run_cli(local_, {"predict", "--model", model().string(), "--precision", "fp16", dir}).code,
            2);
}

// On a CPU without bf16 instructions (oneDNN held to AVX2 by its environment variable) bf16
// runs fp32, says so on stderr, and scores as fp32 does; info says what would run.
TEST_F(Cli, Bf16WithoutTheInstructionsRunsFp32AndSaysSo) {
  setenv("DNNL_MAX_CPU_ISA", "AVX2", 1);
  std::string err;
  const auto asked = predict_scores(local_, model(), data(), {"--precision", "bf16"}, &err);
  CmdResult info = run_cli(local_, {"info", model().string(), "--precision", "bf16"});
  unsetenv("DNNL_MAX_CPU_ISA");
  EXPECT_NE(err.find("precision bf16: oneDNN has no bf16 kernels"), std::string::npos) << err;
  EXPECT_NE(err.find("avx2"), std::string::npos) << err;
  const auto fp32 = predict_scores(local_, model(), data(), {"--precision", "fp32"});
  ASSERT_EQ(asked.size(), 4u);
  for (const auto& [path, s] : asked) EXPECT_NEAR(s, fp32.at(path), 1e-4 * std::abs(s)) << path;
  ASSERT_EQ(info.code, 0) << info.err;
  const auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["backbone_run"]["engine"], "dnnl");
  EXPECT_EQ(j["backbone_run"]["precision"], "fp32");
}

TEST_F(Cli, PredictThresholdOverridesTheModel) {
  const std::string img = (data() / "test" / "good" / "000.png").string();
  CmdResult low = run_cli(local_, {"predict", "--model", model().string(), "--threshold", "0", img});
  CmdResult high = run_cli(local_, {"predict", "--model", model().string(), "--threshold", "1e9", img});
  ASSERT_EQ(low.code, 0) << low.err;
  ASSERT_EQ(high.code, 0) << high.err;
  EXPECT_EQ(nlohmann::json::parse(low.out)["label"], "anomalous");
  EXPECT_EQ(nlohmann::json::parse(high.out)["label"], "normal");
}

TEST_F(Cli, UnreadableImageIsReportedSkippedAndFlagged) {
  const fs::path bad = local_ / "broken.png";
  write_bytes(bad, "this is not a png");
  const std::string good = (data() / "test" / "good" / "000.png").string();
  CmdResult r = run_cli(local_, {"predict", "--model", model().string(), bad.string(), good});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("broken.png"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("000.png"), std::string::npos) << "the good image is still scored";
}

TEST_F(Cli, FitSkipsACorruptTrainingImage) {
  const fs::path folder = local_ / "train";
  fs::create_directories(folder);
  for (int i = 0; i < 4; ++i)
    fs::copy_file(data() / "train" / "good" / ("00" + std::to_string(i) + ".png"),
                  folder / (std::to_string(i) + ".png"));
  std::string png = read_bytes(folder / "0.png");
  write_bytes(folder / "0.png", png.substr(0, png.size() / 2));  // truncated
  CmdResult r = run_cli(local_, {"fit", "--data", folder.string(), "--out", (local_ / "m").string(),
                             "--backbone", "mobilenet_v2", "--image-size", "64"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("0.png"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(local_ / "m"));
}

TEST_F(Cli, BadInputGivesExitCode3AndNamesTheFile) {
  const fs::path missing = local_ / "nowhere";
  CmdResult r = run_cli(local_, {"fit", "--data", missing.string(), "--out", (local_ / "m").string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("nowhere"), std::string::npos) << r.err;

  fs::create_directories(local_ / "empty");
  r = run_cli(local_, {"fit", "--data", (local_ / "empty").string(), "--out", (local_ / "m").string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(local_ / "m"));

  r = run_cli(local_,
          {"fit", "--data", data().string(), "--out", (local_ / "no" / "dir" / "m").string()});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
}

TEST_F(Cli, UsageErrorsGiveExitCode2) {
  EXPECT_EQ(run_cli(local_, {"fit", "--data", data().string()}).code, 2);  // no --out
  EXPECT_EQ(run_cli(local_, {"frobnicate"}).code, 2);
  EXPECT_EQ(run_cli(local_, {"fit", "--data", data().string(), "--out", (local_ / "m").string(),
                         "--coreset-ratio", "0"})
                .code,
            2);
  EXPECT_EQ(run_cli(local_, {"fit", "--data", data().string(), "--out", (local_ / "m").string(),
                         "--backbone", "resnet_9000"})
                .code,
            3);
}

TEST_F(Cli, DamagedModelFilesAreRejectedWithExitCode3) {
  const std::string bytes = read_bytes(model());
  const fs::path img = data() / "test" / "good" / "000.png";
  struct Case {
    std::string name, bytes, expect;
  };
  std::string newer = bytes;
  const size_t v = newer.find("\"format_version\":\"");
  ASSERT_NE(v, std::string::npos);
  newer[v + 18] = '9';
  std::string foreign = bytes;
  const size_t f = foreign.find("\"patchcore\"");
  ASSERT_NE(f, std::string::npos);
  foreign.replace(f, 11, "\"otherthing\"");
  std::vector<Case> cases{
      {"truncated", bytes.substr(0, bytes.size() - 100), "truncated"},
      {"empty", "", ""},
      {"newer", newer, "version"},
      {"foreign", foreign, "patchcore"},
      {"text", "hello world, not a model", ""},
  };
  for (const Case& c : cases) {
    const fs::path file = local_ / (c.name + ".patchcore");
    write_bytes(file, c.bytes);
    CmdResult r = run_cli(local_, {"predict", "--model", file.string(), img.string()});
    EXPECT_EQ(r.code, 3) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(file.filename().string()), std::string::npos) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.name << ": " << r.err;
    EXPECT_EQ(run_cli(local_, {"info", file.string()}).code, 3) << c.name;
  }
}

TEST_F(Cli, ModelWhoseBackboneWasSwappedIsRejected) {
  // The stored graph no longer being the one the bank was built with must not pass silently.
  std::string bytes = read_bytes(model());
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  auto h = nlohmann::json::parse(bytes.substr(8, header));
  auto off = h["backbone_onnx"]["data_offsets"];
  const size_t middle = 8 + header + (off[0].get<size_t>() + off[1].get<size_t>()) / 2;
  bytes[middle] = static_cast<char>(bytes[middle] ^ 0x5a);
  const fs::path file = local_ / "swapped.patchcore";
  write_bytes(file, bytes);
  CmdResult r = run_cli(local_, {"predict", "--model", file.string(),
                             (data() / "test" / "good" / "000.png").string()});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("backbone"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("swapped.patchcore"), std::string::npos) << r.err;
}

TEST_F(Cli, EvalSaveThresholdRewritesTheModelAtomically) {
  const fs::path copy = local_ / "copy.patchcore";
  fs::copy_file(model(), copy);
  CmdResult r = run_cli(local_, {"eval", "--model", copy.string(), "--data", data().string(), "--out",
                             (local_ / "e").string(), "--no-images", "--save-threshold"});
  ASSERT_EQ(r.code, 0) << r.err;
  CmdResult info = run_cli(local_, {"info", copy.string()});
  ASSERT_EQ(info.code, 0);
  auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["calibration"]["source"], "f1");
  auto m = nlohmann::json::parse(read_bytes(local_ / "e" / "metrics.json"));
  EXPECT_DOUBLE_EQ(j["calibration"]["image_threshold"].get<double>(),
                   m["image_threshold"].get<double>());
}

}  // namespace
