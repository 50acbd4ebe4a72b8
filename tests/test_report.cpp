// evaluate(): metrics.json, predictions.csv, pictures and report.html on a tiny generated data
// set, checked against plain recomputations and rendered in headless Chromium when installed.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <regex>
#include <sstream>

#include "image.h"
#include "metrics.h"
#include "overlay.h"
#include "report.h"
#include "synthetic.h"
#include "test_support.h"

namespace fs = std::filesystem;
using nlohmann::json;
using patchcore::testing::read_bytes;
using patchcore::testing::TempDir;

namespace {

// Mann-Whitney U with average ranks for ties: the textbook AUROC, independent of metrics.cpp.
double plain_auroc(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  std::vector<size_t> order(scores.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  double rank_sum = 0, n_pos = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) ++j;
    const double rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2;
    for (size_t k = i; k < j; ++k)
      if (labels[order[k]]) {
        rank_sum += rank;
        n_pos += 1;
      }
    i = j;
  }
  const double n_neg = static_cast<double>(scores.size()) - n_pos;
  return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg);
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The headless browser: $PATCHCORE_CHROMIUM, else the first of the usual names on PATH.
std::string find_chromium() {
  if (const char* env = std::getenv("PATCHCORE_CHROMIUM"); env && *env) return env;
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  std::vector<std::string> folders;
  for (std::string d; std::getline(dirs, d, ':');) folders.push_back(d);
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
    for (const std::string& d : folders)
      if (!d.empty() && ::access((fs::path(d) / name).c_str(), X_OK) == 0)
        return (fs::path(d) / name).string();
  return "";
}

// Runs headless Chromium offline with a fresh profile; returns its exit status.
int run_chromium(const std::string& chromium, const fs::path& profile,
                 const std::vector<std::string>& args, const fs::path& out, const fs::path& err) {
  // Appended piecewise: GCC 12 warns wrongly (-Wrestrict) on "literal" + std::string&&.
  std::string cmd = "timeout 60 ";
  cmd += quote(chromium);
  cmd +=
      " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run"
      " --disable-background-networking --disable-component-update --disable-sync"
      " --user-data-dir=";
  cmd += quote(profile.string());
  for (const std::string& a : args) {
    cmd += ' ';
    cmd += quote(a);
  }
  cmd += " >";
  cmd += quote(out.string());
  cmd += " 2>";
  cmd += quote(err.string());
  cmd += " </dev/null";
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The attribute values of every <tag ... attr='value'> in the report, in order.
std::vector<std::string> attributes(const std::string& html, const std::string& tag,
                                    const std::string& attr) {
  std::vector<std::string> out;
  const std::regex re("<" + tag + "\\b[^>]*\\b" + attr + "=['\"]([^'\"]*)['\"]");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), re); it != std::sregex_iterator();
       ++it)
    out.push_back((*it)[1]);
  return out;
}

struct Fixture {
  TempDir tmp;
  patchcore::Dataset data;
  std::unique_ptr<patchcore::Model> model;
  patchcore::EvalResult result;
  fs::path out;
  std::string html;
};

// One data set, model and evaluation for the whole file: fitting is the slow part.
class Report : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (patchcore::testing::built_backbones_dir().empty()) return;
    f_ = std::make_unique<Fixture>();
    patchcore::SyntheticParams sp;
    sp.size = 96;
    sp.n_train = 10;
    sp.n_test_good = 4;
    sp.n_per_defect = 3;
    patchcore::write_synthetic_dataset(f_->tmp / "data", sp);
    f_->data = patchcore::scan_dataset(f_->tmp / "data");
    std::vector<fs::path> train;
    for (const auto& s : f_->data.train) train.push_back(s.image);
    patchcore::Params params;
    params.backbone = "mobilenet_v2";
    params.image_size = 128;
    params.coreset_ratio = 0.1;
    params.threads = 2;
    f_->model = std::make_unique<patchcore::Model>(patchcore::Model::fit(train, params));
    f_->out = f_->tmp / "eval";
    f_->result = patchcore::evaluate(*f_->model, f_->data.test, {f_->out, true});
    f_->html = read_bytes(f_->out / "report.html");
  }
  static void TearDownTestSuite() { f_.reset(); }
  void SetUp() override {
    if (!f_) GTEST_SKIP() << "build/backbones missing: run scripts/setup";
  }
  static patchcore::Preprocess preprocess() {
    const patchcore::Params& p = f_->model->params();
    return {p.image_size, p.crop, patchcore::normalization_from_string(p.normalization)};
  }
  static inline std::unique_ptr<Fixture> f_;
};

TEST_F(Report, MetricsJsonKeepsItsKeysAndAddsPixelMetricsPerKind) {
  const json m = json::parse(read_bytes(f_->out / "metrics.json"));
  EXPECT_EQ(m, json::parse(f_->result.metrics_json));
  EXPECT_EQ(m["n_images"], 4 + 3 * 3);
  for (const char* k : {"image_auroc", "pixel_auroc", "aupro", "image_f1", "image_threshold",
                        "map_size", "model_threshold", "ms_per_image", "n_pixel_images"})
    EXPECT_TRUE(m.contains(k)) << k;
  EXPECT_FALSE(m["per_kind"]["good"].contains("pixel_auroc"));
  EXPECT_EQ(m["per_kind"]["good"]["n"], 4);
  for (const char* kind : {"scratch", "spot", "stain"}) {
    const json& k = m["per_kind"][kind];
    EXPECT_EQ(k["n"], 3) << kind;
    for (const char* key : {"image_auroc", "pixel_auroc", "aupro"}) {
      ASSERT_TRUE(k[key].is_number()) << kind << " " << key;
      EXPECT_GE(k[key].get<double>(), 0.0);
      EXPECT_LE(k[key].get<double>(), 1.0);
    }
  }
  const std::string csv = read_bytes(f_->out / "predictions.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "path,kind,label,score,normalized_score,predicted");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 4 + 3 * 3);
}

// The per-kind pixel metrics take the normal test images plus that kind's images, nothing else.
TEST_F(Report, PerKindPixelMetricsMatchAPlainRecomputation) {
  const json m = json::parse(f_->result.metrics_json);
  const patchcore::Preprocess pre = preprocess();
  const int size = f_->model->map_size();
  std::map<std::string, std::vector<std::pair<std::vector<float>, std::vector<uint8_t>>>> by_kind;
  for (const auto& s : f_->data.test) {
    const patchcore::Prediction p = f_->model->predict(s.image);
    cv::Mat gt = s.mask ? patchcore::preprocess_mask(patchcore::load_mask(*s.mask, 0), pre)
                        : cv::Mat::zeros(size, size, CV_8U);
    by_kind[s.kind].push_back(
        {p.map.values, std::vector<uint8_t>(gt.begin<uint8_t>(), gt.end<uint8_t>())});
  }
  for (const char* kind : {"scratch", "spot", "stain"}) {
    std::vector<float> scores;
    std::vector<uint8_t> labels;
    std::vector<std::vector<float>> maps;
    std::vector<std::vector<uint8_t>> masks;
    for (const std::string& k : {std::string("good"), std::string(kind)})
      for (const auto& [map, mask] : by_kind[k]) {
        scores.insert(scores.end(), map.begin(), map.end());
        labels.insert(labels.end(), mask.begin(), mask.end());
        maps.push_back(map);
        masks.push_back(mask);
      }
    EXPECT_NEAR(m["per_kind"][kind]["pixel_auroc"].get<double>(), plain_auroc(scores, labels), 1e-9)
        << kind;
    const auto pro = patchcore::aupro(maps, masks, size, size, 0.3);
    ASSERT_TRUE(pro);
    EXPECT_NEAR(m["per_kind"][kind]["aupro"].get<double>(), pro->aupro, 1e-9) << kind;
  }
}

// With --resize pad the pixel metrics cover each image's own pixels, never the pad.
TEST(ReportPad, PixelMetricsLeaveThePadOut) {
  if (patchcore::testing::built_backbones_dir().empty())
    GTEST_SKIP() << "build/backbones missing: run scripts/setup";
  TempDir tmp;
  patchcore::SyntheticParams sp;
  sp.size = 96;
  sp.n_train = 8;
  sp.n_test_good = 3;
  sp.n_per_defect = 2;
  patchcore::write_synthetic_dataset(tmp.path() / "data", sp);
  patchcore::Dataset data = patchcore::scan_dataset(tmp.path() / "data");
  // Landscape images of three heights: each image and its mask cut to a 96-wide band.
  std::map<fs::path, int> height;
  int i = 0;
  for (const auto* list : {&data.train, &data.test})
    for (const auto& s : *list) {
      const int h = 40 + 8 * (i++ % 3);
      height[s.image] = h;
      cv::Mat img = cv::imread(s.image.string(), cv::IMREAD_UNCHANGED);
      cv::imwrite(s.image.string(), img(cv::Rect(0, 24, 96, h)).clone());
      if (s.mask) {
        cv::Mat m = cv::imread(s.mask->string(), cv::IMREAD_UNCHANGED);
        cv::imwrite(s.mask->string(), m(cv::Rect(0, 24, 96, h)).clone());
      }
    }
  std::vector<fs::path> train;
  for (const auto& s : data.train) train.push_back(s.image);
  patchcore::Params params;
  params.backbone = "mobilenet_v2";
  params.image_size = 96;
  params.resize = patchcore::Resize::pad;
  params.threads = 2;
  const patchcore::Model model = patchcore::Model::fit(train, params);
  EXPECT_EQ(model.params().resize, patchcore::Resize::pad);
  model.save(tmp.path() / "pad.patchcore");
  EXPECT_EQ(patchcore::Model::load(tmp.path() / "pad.patchcore").params().resize,
            patchcore::Resize::pad);
  // fixed: one factor from the largest training image (96 wide fills 96).
  params.resize = patchcore::Resize::fixed;
  const patchcore::Model fixed = patchcore::Model::fit(train, params);
  EXPECT_DOUBLE_EQ(fixed.params().resize_scale, 1.0);
  fixed.save(tmp.path() / "fixed.patchcore");
  const patchcore::Model loaded = patchcore::Model::load(tmp.path() / "fixed.patchcore");
  EXPECT_EQ(loaded.params().resize, patchcore::Resize::fixed);
  EXPECT_DOUBLE_EQ(loaded.params().resize_scale, 1.0);
  const auto result = patchcore::evaluate(model, data.test, {tmp.path() / "eval", true});
  const json m = json::parse(result.metrics_json);

  const patchcore::Preprocess pre = patchcore::preprocess_for(model.params());
  const int size = model.map_size();
  std::vector<float> inside, all;
  std::vector<uint8_t> inside_labels, all_labels;
  std::vector<std::vector<float>> maps;
  std::vector<std::vector<uint8_t>> masks;
  std::vector<std::pair<int, int>> sizes;
  for (const auto& s : data.test) {
    const patchcore::Prediction p = model.predict(s.image);
    ASSERT_EQ(p.image_height, height[s.image]);
    cv::Mat gt = s.mask ? patchcore::preprocess_mask(patchcore::load_mask(*s.mask, 0), pre)
                        : cv::Mat::zeros(size, size, CV_8U);
    const cv::Mat map(size, size, CV_32F, const_cast<float*>(p.map.values.data()));
    const cv::Rect r = patchcore::content_rect(cv::Size(96, height[s.image]), pre);
    EXPECT_EQ(r, cv::Rect(0, (96 - height[s.image]) / 2, 96, height[s.image]));
    const cv::Mat map_in = map(r).clone(), gt_in = gt(r).clone();
    inside.insert(inside.end(), map_in.begin<float>(), map_in.end<float>());
    inside_labels.insert(inside_labels.end(), gt_in.begin<uint8_t>(), gt_in.end<uint8_t>());
    all.insert(all.end(), p.map.values.begin(), p.map.values.end());
    all_labels.insert(all_labels.end(), gt.begin<uint8_t>(), gt.end<uint8_t>());
    maps.emplace_back(map_in.begin<float>(), map_in.end<float>());
    masks.emplace_back(gt_in.begin<uint8_t>(), gt_in.end<uint8_t>());
    sizes.emplace_back(r.height, r.width);
  }
  const double with_pad = plain_auroc(all, all_labels);
  EXPECT_NEAR(m["pixel_auroc"].get<double>(), plain_auroc(inside, inside_labels), 1e-9);
  EXPECT_GT(std::abs(m["pixel_auroc"].get<double>() - with_pad), 1e-6)
      << "the pad changes the metric, so leaving it out is observable";
  const auto pro = patchcore::aupro(maps, masks, sizes, 0.3);
  ASSERT_TRUE(pro);
  EXPECT_NEAR(m["aupro"].get<double>(), pro->aupro, 1e-9);
  // The overlays are the images' own size.
  for (const auto& s : data.test) {
    const fs::path overlay =
        tmp.path() / "eval" / "images" / s.kind / (s.image.stem().string() + ".png");
    const cv::Mat o = cv::imread(overlay.string());
    ASSERT_FALSE(o.empty()) << overlay;
    EXPECT_EQ(o.size(), cv::Size(96, height[s.image]));
  }
}

TEST_F(Report, HtmlHoldsTheTablesCurvesAndGalleries) {
  const std::string& html = f_->html;
  for (const char* text :
       {"<table", "pixel AUROC", "AUPRO", "best F1", "id='roc'", "id='pro'", "id='histogram'",
        "model threshold", "worst-false-positives", "worst-false-negatives", "best-detections"})
    EXPECT_NE(html.find(text), std::string::npos) << text;
  EXPECT_EQ(attributes(html, "polyline", "class").size(), 2u);    // ROC and PRO
  EXPECT_EQ(attributes(html, "rect", "class").size() > 4, true);  // histogram bars, legend
  // Axes have ticks: 0.2 .. 1.0 on the ROC, 0.1 .. 0.3 along the PRO's FPR.
  EXPECT_NE(html.find(">0.2</text>"), std::string::npos);
  EXPECT_NE(html.find(">0.3</text>"), std::string::npos);
  // Galleries: 4 normal images, 6 of the 9 anomalous ones twice; every picture is a file
  // beside the report holding image | heatmap | ground truth at 180 px.
  const std::vector<std::string> srcs = attributes(html, "img", "src");
  ASSERT_EQ(srcs.size(), 4u + 6u + 6u);
  for (const std::string& src : srcs) {
    EXPECT_EQ(src.find("gallery/"), 0u) << src;  // relative: the folder can move
    cv::Mat img = cv::imread((f_->out / src).string());
    ASSERT_FALSE(img.empty()) << src;
    EXPECT_EQ(img.rows, 180);
    EXPECT_EQ(img.cols, 3 * 180 + 2 * 6);  // three square panels and two gaps
  }
  // The scripts a headless browser relies on and nothing from the network.
  EXPECT_NE(html.find("dataset"), std::string::npos);
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
}

// The galleries pick the right images, and every picture belongs to its image: the predicted
// mask under images/ is the one its own map gives, and the gallery's heatmap panel is that
// image's overlay under images/ (the galleries reuse the maps computed for the metrics).
TEST_F(Report, GalleriesShowTheRightImagesWithTheirOwnHeatmaps) {
  const std::vector<std::string> alts = attributes(f_->html, "img", "alt");
  ASSERT_EQ(alts.size(), 16u);
  std::vector<std::pair<double, fs::path>> normal, anomalous;
  std::map<fs::path, std::string> kind_of;
  for (const auto& s : f_->data.test) {
    const double score = f_->model->predict(s.image).score;
    (s.label == 1 ? anomalous : normal).push_back({score, s.image});
    kind_of[s.image] = s.kind;
  }
  std::sort(normal.rbegin(), normal.rend());
  std::sort(anomalous.begin(), anomalous.end());
  EXPECT_EQ(alts[0], normal[0].second.string());
  EXPECT_EQ(alts[3], normal[3].second.string());
  EXPECT_EQ(alts[4], anomalous[0].second.string());       // worst false negative
  EXPECT_EQ(alts[10], anomalous.back().second.string());  // best detection

  const std::vector<std::string> srcs = attributes(f_->html, "img", "src");
  for (size_t i : {size_t(0), size_t(4), size_t(10)}) {
    const fs::path image = alts[i];
    const fs::path pictures = f_->out / "images" / kind_of.at(image);
    const patchcore::Prediction p = f_->model->predict(image);
    cv::Mat rgb = patchcore::load_rgb(image);
    const cv::Mat expected_mask = patchcore::predicted_mask(
        patchcore::map_to_image(p.map, rgb.size(), preprocess()), f_->model->calibration());
    const cv::Mat mask = cv::imread((pictures / (image.stem().string() + "_mask.png")).string(),
                                    cv::IMREAD_GRAYSCALE);
    ASSERT_EQ(mask.size(), expected_mask.size()) << image;
    EXPECT_EQ(cv::norm(mask, expected_mask, cv::NORM_L1), 0.0) << image;

    cv::Mat overlay = cv::imread((pictures / (image.stem().string() + ".png")).string());
    ASSERT_EQ(overlay.size(), rgb.size());
    cv::resize(overlay, overlay, cv::Size(180, 180), 0, 0, cv::INTER_LINEAR);
    cv::Mat picture = cv::imread((f_->out / srcs[i]).string());
    cv::Mat panel = picture(cv::Rect(186, 0, 180, 180));
    EXPECT_LT(cv::norm(panel, overlay, cv::NORM_L1) / (180.0 * 180 * 3), 2.0) << image;
    // The first panel is the plain image, not a heatmap.
    cv::Mat plain;
    cv::cvtColor(rgb, plain, cv::COLOR_RGB2BGR);
    cv::resize(plain, plain, cv::Size(180, 180), 0, 0, cv::INTER_LINEAR);
    EXPECT_LT(cv::norm(picture(cv::Rect(0, 0, 180, 180)), plain, cv::NORM_L1) / (180.0 * 180 * 3),
              3.0);
    EXPECT_GT(cv::norm(panel, plain, cv::NORM_L1) / (180.0 * 180 * 3), 10.0);
  }
}

TEST_F(Report, RendersInHeadlessChromium) {
  const std::string chromium = find_chromium();
  if (chromium.empty())
    GTEST_SKIP() << "chromium not found (apt-get install chromium, or set PATCHCORE_CHROMIUM)";
  TempDir run;
  const std::string url = "file://" + fs::absolute(f_->out / "report.html").string();
  const int code =
      run_chromium(chromium, run / "profile", {"--virtual-time-budget=10000", "--dump-dom", url},
                   run / "dom.html", run / "stderr.txt");
  ASSERT_EQ(code, 0) << read_bytes(run / "stderr.txt");
  const std::string dom = read_bytes(run / "dom.html");
  std::smatch body;
  ASSERT_TRUE(std::regex_search(dom, body, std::regex("<body[^>]*>")))
      << dom.substr(0, 500) << read_bytes(run / "stderr.txt");
  const std::string tag = body[0];
  auto attr = [&](const std::string& name) {
    std::smatch m;
    return std::regex_search(tag, m, std::regex(name + "=\"([^\"]*)\"")) ? std::string(m[1])
                                                                         : std::string("?");
  };
  EXPECT_EQ(attr("data-ready"), "1") << tag;
  EXPECT_EQ(attr("data-images-total"), "16") << tag;
  EXPECT_EQ(attr("data-images-decoded"), "16") << tag;  // every gallery picture decoded
  EXPECT_EQ(attr("data-curves-drawn"), "2") << tag;     // ROC and PRO have a visible extent
  EXPECT_GT(std::atoi(attr("data-histogram-bars").c_str()), 2) << tag;

  // A screenshot of the first screen is a real picture, not a blank page.
  const fs::path png = run / "shot.png";
  ASSERT_EQ(run_chromium(chromium, run / "profile2",
                         {"--window-size=1200,900", "--hide-scrollbars",
                          "--screenshot=" + png.string(), url},
                         run / "out2.txt", run / "err2.txt"),
            0)
      << read_bytes(run / "err2.txt");
  cv::Mat shot = cv::imread(png.string());
  ASSERT_FALSE(shot.empty());
  EXPECT_EQ(shot.cols, 1200);
  cv::Scalar mean, stddev;
  cv::meanStdDev(shot, mean, stddev);
  EXPECT_GT(stddev[0], 10.0);
}

}  // namespace

namespace {

// The metrics without the timing, which differs between runs.
json without_timing(json m) {
  m.erase("ms_per_image");
  return m;
}

}  // namespace

// Without an output folder nothing is written and the metrics are the same; a data set folder
// gives its test images' evaluation.
TEST_F(Report, EvaluateWithoutAnOutputFolderOrFromADataSetFolder) {
  TempDir tmp;
  const fs::path cwd = fs::current_path();
  fs::current_path(tmp.path());  // a stray relative write would land here
  const patchcore::EvalResult quiet = patchcore::evaluate(*f_->model, f_->data.test, {});
  fs::current_path(cwd);
  EXPECT_TRUE(fs::is_empty(tmp.path()));
  const json expected = without_timing(json::parse(f_->result.metrics_json));
  EXPECT_EQ(without_timing(json::parse(quiet.metrics_json)), expected);
  EXPECT_EQ(quiet.has_f1, f_->result.has_f1);
  EXPECT_EQ(quiet.f1_calibration.image_threshold, f_->result.f1_calibration.image_threshold);

  const patchcore::EvalResult from_folder =
      patchcore::evaluate(*f_->model, f_->tmp / "data", patchcore::EvalOptions{});
  EXPECT_EQ(without_timing(json::parse(from_folder.metrics_json)), expected);

  // A plain folder of images has no labels.
  patchcore::testing::expect_bad_input_naming((f_->tmp / "data" / "train" / "good").string(), [&] {
    patchcore::evaluate(*f_->model, f_->tmp / "data" / "train" / "good", patchcore::EvalOptions{});
  });
}
