#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace patchcore::cli {
namespace {

double peak_rss_mb() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}

std::string cpuinfo_field(const std::string& name) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name, 0) == 0 && line.find(':') != std::string::npos)
      return line.substr(line.find(':') + 2);
  return "unknown";
}

// The CPU flags the engines dispatch on, as lscpu names them: every figure is read with them.
std::vector<std::string> vector_flags() {
  static const std::set<std::string> wanted = {
      "avx2",        "fma",         "avx512f",  "avx512bw", "avx512vl", "avx512_vnni",
      "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8"};
  std::istringstream flags(cpuinfo_field("flags"));
  std::vector<std::string> out;
  for (std::string f; flags >> f;)
    if (wanted.count(f) != 0) out.push_back(f);
  return out;
}

json machine_json(int threads) {
  return {{"cpu", cpuinfo_field("model name")},
          {"cores", sysconf(_SC_NPROCESSORS_ONLN)},
          {"flags", vector_flags()},
          {"dnnl_isa", dnnl_isa()},
          {"sgemm_gflops", sgemm_gflops(threads)}};
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

// Every engine and precision on the same input, alternating image by image so that a busy or
// throttled machine slows all alike: medians and minima of `runs` forwards each, and how far
// each one's features are from OpenCV's fp32 ones (largest difference over the layer's largest
// value). bf16 runs only where the CPU has it (else "bf16_skipped" says why).
json compare_engines(const Params& params, int runs) {
  const BackboneSpec spec = resolve_backbone(params);
  const std::vector<std::string>& layers = spec.layers;
  const int size = spec.image_size;
  std::vector<float> x(3 * static_cast<size_t>(size) * size);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37 * static_cast<double>(i));
  json out{{"backbone", params.backbone}, {"image_size", size}, {"layers", layers}, {"runs", runs}};
  std::vector<FeatureExtractor> nets;
  for (auto [e, pr] : {std::pair{BackboneEngine::opencv, Precision::fp32},
                       {BackboneEngine::dnnl, Precision::fp32},
                       {BackboneEngine::dnnl, Precision::bf16}}) {
    Params p = params;
    p.engine = e;
    p.precision = pr;
    FeatureExtractor net(p, size, size);
    if (pr == Precision::bf16 && net.precision() != "bf16") {
      out["bf16_skipped"] = net.notes().empty() ? "no bf16" : net.notes()[0];
      continue;
    }
    nets.push_back(std::move(net));
  }
  std::vector<std::vector<FeatureMap>> first;
  for (auto& net : nets) first.push_back(net.extract(x.data(), 1));  // warm-up, and compared
  std::vector<std::vector<double>> ms(nets.size());
  for (int r = 0; r < runs; ++r) {
    for (size_t e = 0; e < nets.size(); ++e) {
      const auto t0 = std::chrono::steady_clock::now();
      nets[e].extract(x.data(), 1);
      ms[e].push_back(1e3 *
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  // The native engine's count (OpenCV's counts a depthwise convolution as a dense one).
  const double flops = nets.back().flops_per_image();
  out["gflop_per_image"] = flops / 1e9;
  for (size_t e = 0; e < nets.size(); ++e) {
    std::sort(ms[e].begin(), ms[e].end());
    const double median = ms[e][ms[e].size() / 2];
    json& j = out["engines"][nets[e].engine() + "_" + nets[e].precision()];
    j = {{"median_ms", median},
         {"min_ms", ms[e].front()},
         {"gflops_at_median", flops / median / 1e6}};
    if (e == 0) continue;
    for (size_t k = 0; k < layers.size(); ++k) {
      double diff = 0, scale = 0;
      const std::vector<float>&a = first[0][k].values, &b = first[e][k].values;
      for (size_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, std::abs(double{a[i]} - b[i]));
        scale = std::max(scale, std::abs(double{a[i]}));
      }
      j["max_difference_over_max_value"][layers[k]] = scale > 0 ? diff / scale : diff;
    }
  }
  out["peak_rss_mb"] = peak_rss_mb();
  return out;
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "time every stage of fit and predict (JSON on stdout)");
  struct State {
    std::string data;
    int max_predict = 0;
    int compare_engines = 0;
    FitOptions options;
  };
  auto s = std::make_shared<State>();
  cmd->add_option("--data", s->data, "MVTec category folder or a folder of normal images");
  cmd->add_option("--max-predict", s->max_predict,
                  "predict at most this many test images (0: all)");
  cmd->add_option("--compare-engines", s->compare_engines,
                  "instead: run the backbone N times through each engine, alternating, on one "
                  "synthetic image (no --data needed)");
  add_fit_options(*cmd, s->options);
  cmd->callback([s] {
    const Params params = resolve_fit_options(s->options);
    set_opencv_threads(params.threads);
    if (s->compare_engines < 0) throw_usage("--compare-engines must be >= 0");
    if (s->compare_engines > 0) {
      json out = compare_engines(params, s->compare_engines);
      out["machine"] = machine_json(params.threads);
      std::cout << out.dump(2) << "\n";
      return;
    }
    if (s->data.empty()) throw_usage("bench needs --data (or --compare-engines N)");
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
    out["machine"] = machine_json(params.threads);
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
      pj["knn_search"] = model.knn_search();
      pj["knn_exact_rows_per_patch"] = model.knn_exact_per_patch();
      pj["knn_coarse_stage"] = model.knn_coarse_stage();
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
    out["backbone"]["precision"] = model.backbone_precision();
    out["predict"] = pj;
    out["peak_rss_mb"] = peak_rss_mb();
    std::cout << out.dump(2) << "\n";
  });
}

}  // namespace patchcore::cli
