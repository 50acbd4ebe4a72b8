#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "blas.h"
#include "cli.h"
#include "dataset.h"
#include "omp_threads.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace patchcore::cli {
namespace {

double peak_rss_mb() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// The machine's sgemm rate on the thread count of the run (best of 3 at the kNN's shape: one
// image's 1,225 patches against 4,096 rows of 1,024), the yardstick for the GFLOP/s figures.
double sgemm_gflops(int threads) {
  const int m = 4096, n = 1225, k = 1024;
  std::vector<float> a(static_cast<size_t>(m) * k, 0.5f), b(static_cast<size_t>(n) * k, 0.25f),
      c(static_cast<size_t>(m) * n);
  OmpThreadsGuard guard(threads);
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    const float one = 1.0f, zero = 0.0f;
    const auto t0 = std::chrono::steady_clock::now();
    sgemm_("T", "N", &m, &n, &k, &one, a.data(), &k, b.data(), &k, &zero, c.data(), &m);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > 0) best = std::max(best, 2.0 * m * n * k / s / 1e9);
  }
  return best;
}

struct Stages {
  std::map<std::string, std::pair<double, int64_t>> totals;  // seconds, items
  void add(const std::string& stage, double seconds, int64_t items) {
    auto& t = totals[stage];
    t.first += seconds;
    t.second += items;
  }
  json to_json() const {
    json j = json::object();
    for (const auto& [stage, t] : totals) {
      json s{{"seconds", t.first}, {"items", t.second}};
      if (stage != "coreset" && t.second > 0) {
        s["ms_per_image"] = 1000.0 * t.first / static_cast<double>(t.second);
        s["images_per_s"] = t.first > 0 ? static_cast<double>(t.second) / t.first : 0.0;
      }
      j[stage] = s;
    }
    return j;
  }
};

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "time every stage of fit and predict (JSON on stdout)");
  struct State {
    std::string data;
    int max_predict = 0;
    FitOptions options;
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--data", s->data, "MVTec category folder or a folder of normal images")
      ->required();
  cmd->add_option("--max-predict", s->max_predict,
                  "predict at most this many test images (0: all)");
  add_fit_options(*cmd, s->options);
  cmd->callback([s] {
    const Params params = resolve_fit_options(s->options);
    const Dataset data = scan_dataset(s->data);
    std::vector<fs::path> train, test;
    for (const Sample& x : data.train) train.push_back(x.image);
    for (const Sample& x : data.test) test.push_back(x.image);
    if (test.empty()) test = train;
    if (s->max_predict > 0 && test.size() > static_cast<size_t>(s->max_predict))
      test.resize(static_cast<size_t>(s->max_predict));

    Callbacks cb = stderr_callbacks(true);
    Stages fit_stages, predict_stages;
    cb.timing = [&](const std::string& st, double sec, int64_t n) { fit_stages.add(st, sec, n); };
    const auto t0 = std::chrono::steady_clock::now();
    Model model = Model::fit(train, params, cb);
    const double fit_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double fit_rss = peak_rss_mb();

    cb.timing = [&](const std::string& st, double sec, int64_t n) {
      predict_stages.add(st, sec, n);
    };
    const auto t1 = std::chrono::steady_clock::now();
    std::vector<Prediction> preds = model.predict(test, cb);
    const double pred_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();

    const json info = json::parse(model.info_json());
    const int64_t bank_rows = info["memory_bank"]["rows"].get<int64_t>();
    const int64_t dim = info["memory_bank"]["dim"].get<int64_t>();
    const int64_t grid = info["grid"][0].get<int64_t>() * info["grid"][1].get<int64_t>();
    json out;
    out["machine"] = {{"cpu", cpu_model()},
                      {"cores", sysconf(_SC_NPROCESSORS_ONLN)},
                      {"sgemm_gflops", sgemm_gflops(params.threads)}};
    out["settings"] = info["params"];
    out["backbone"] = info["backbone"];
    out["memory_bank"] = info["memory_bank"];
    out["fit"] = {
        {"images", train.size()},
        {"seconds", fit_s},
        {"stages", fit_stages.to_json()},
        {"bank_before_coreset_mb", static_cast<double>(grid) * dim * 4.0 *
                                       static_cast<double>(train.size()) / (1024.0 * 1024.0)},
        {"peak_rss_mb", fit_rss}};
    json pj{{"images", preds.size()},
            {"seconds", pred_s},
            {"ms_per_image", preds.empty() ? 0.0 : 1000.0 * pred_s / preds.size()},
            {"stages", predict_stages.to_json()}};
    auto knn = predict_stages.totals.find("knn");
    if (knn != predict_stages.totals.end() && knn->second.first > 0) {
      // The brute-force work (every patch against every bank row, 2 flops per multiply-add)
      // per second. With the bound most rows are ruled out unmeasured, so this rate is what a
      // brute-force search would have to reach to keep up, not what the CPU executed.
      const double flops = 2.0 * grid * bank_rows * dim * static_cast<double>(knn->second.second);
      pj["knn_gflops"] = flops / knn->second.first / 1e9;
      pj["knn_search"] = model.knn_exact_per_patch() > 0 ? "bounded" : "brute force";
      pj["knn_exact_rows_per_patch"] = model.knn_exact_per_patch();
    }
    const double flops = model.backbone_flops_per_image();
    for (json* phase : {&out["fit"], &pj}) {
      json& st = (*phase)["stages"];
      if (flops > 0 && st.contains("backbone") && st["backbone"]["seconds"].get<double>() > 0)
        st["backbone"]["gflops"] = flops * st["backbone"]["items"].get<double>() /
                                   st["backbone"]["seconds"].get<double>() / 1e9;
    }
    out["backbone"]["gflop_per_image"] = flops / 1e9;
    out["backbone"]["engine"] = model.backbone_engine();
    out["predict"] = pj;
    out["peak_rss_mb"] = peak_rss_mb();
    std::cout << out.dump(2) << "\n";
  });
}

}  // namespace patchcore::cli
