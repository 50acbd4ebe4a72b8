// The public Model: the stages wired together (fit, predict, save, load).
#include "patchcore/patchcore.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <opencv2/core.hpp>
#include <random>
#include <sstream>

#include "backbone.h"
#include "coreset.h"
#include "embedding.h"
#include "error.h"
#include "image.h"
#include "knn.h"
#include "model_file.h"
#include "scoring.h"
#include "sha256.h"
#include "threshold.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace patchcore {
namespace {

const char* to_string(EmbeddingMode m) { return m == EmbeddingMode::paper ? "paper" : "concat"; }
const char* to_string(Upsample u) { return u == Upsample::bilinear ? "bilinear" : "nearest"; }

json params_to_json(const Params& p) {
  return json{{"preset", p.preset},
              {"backbone", p.backbone},
              {"layers", p.layers},
              {"normalization", p.normalization},
              {"image_size", p.image_size},
              {"crop", p.crop},
              {"resize", to_string(p.resize)},
              {"resize_scale", p.resize_scale},
              {"intensity", to_string(p.intensity)},
              {"embedding", to_string(p.embedding)},
              {"patch_size", p.patch_size},
              {"pretrain_dim", p.pretrain_dim},
              {"target_dim", p.target_dim},
              {"coreset_ratio", p.coreset_ratio},
              {"coreset_min", p.coreset_min},
              {"coreset_dim", p.coreset_dim},
              {"seed", p.seed},
              {"k", p.k},
              {"squared_l2", p.squared_l2},
              {"reweight", p.reweight},
              {"reweight_b", p.reweight_b},
              {"upsample", to_string(p.upsample)},
              {"blur_sigma", p.blur_sigma},
              {"blur_reflect101", p.blur_reflect101},
              {"holdout_fraction", p.holdout_fraction},
              {"batch_size", p.batch_size}};
}

Params params_from_json(const json& j) {
  Params p;
  p.preset = j.value("preset", "");
  p.backbone = j.at("backbone").get<std::string>();
  p.layers = j.at("layers").get<std::vector<std::string>>();
  p.normalization = j.at("normalization").get<std::string>();
  p.image_size = j.at("image_size").get<int>();
  p.crop = j.at("crop").get<int>();
  p.resize = resize_from_string(j.value("resize", "squash"));  // absent in older files
  p.resize_scale = j.value("resize_scale", 0.0);
  p.intensity = intensity_from_string(j.value("intensity", "keep"));
  p.embedding = j.at("embedding").get<std::string>() == "paper" ? EmbeddingMode::paper
                                                                : EmbeddingMode::concat;
  p.patch_size = j.at("patch_size").get<int>();
  p.pretrain_dim = j.at("pretrain_dim").get<int>();
  p.target_dim = j.at("target_dim").get<int>();
  p.coreset_ratio = j.at("coreset_ratio").get<double>();
  p.coreset_dim = j.at("coreset_dim").get<int>();
  p.coreset_min = j.value("coreset_min", int64_t{0});  // absent before the floor existed
  p.seed = j.at("seed").get<uint64_t>();
  p.k = j.at("k").get<int>();
  p.squared_l2 = j.at("squared_l2").get<bool>();
  p.reweight = j.at("reweight").get<bool>();
  p.reweight_b = j.at("reweight_b").get<int>();
  p.upsample =
      j.at("upsample").get<std::string>() == "nearest" ? Upsample::nearest : Upsample::bilinear;
  p.blur_sigma = j.at("blur_sigma").get<double>();
  p.blur_reflect101 = j.value("blur_reflect101", false);
  p.holdout_fraction = j.at("holdout_fraction").get<double>();
  p.batch_size = j.at("batch_size").get<int>();
  return p;
}

json calibration_to_json(const Calibration& c) {
  return json{{"image_threshold", c.image_threshold},
              {"pixel_threshold", c.pixel_threshold},
              {"min_score", c.min_score},
              {"max_score", c.max_score},
              {"source", c.source}};
}

Calibration calibration_from_json(const json& j) {
  Calibration c;
  c.image_threshold = j.at("image_threshold").get<double>();
  c.pixel_threshold = j.at("pixel_threshold").get<double>();
  c.min_score = j.at("min_score").get<double>();
  c.max_score = j.at("max_score").get<double>();
  c.source = j.at("source").get<std::string>();
  return c;
}

void validate(const Params& p) {
  if (p.image_size != 0 && (p.image_size < 32 || p.image_size > 4096))
    throw_usage("--image-size must be between 32 and 4096, got " + std::to_string(p.image_size));
  if (p.crop < 0 || (p.crop > 0 && p.image_size > 0 && p.crop > p.image_size))
    throw_usage("--crop must be between 0 and the image size");
  if (!(p.coreset_ratio > 0)) throw_usage("--coreset-ratio must be > 0 (1 keeps every patch)");
  if (p.patch_size < 1 || p.patch_size % 2 == 0) throw_usage("patch size must be odd and >= 1");
  if (p.pretrain_dim < 1 || p.target_dim < 1) throw_usage("pooling dimensions must be >= 1");
  if (p.coreset_min < 0) throw_usage("--coreset-min must be >= 0");
  if (p.coreset_dim < 1) throw_usage("coreset projection dimension must be >= 1");
  if (p.k < 1) throw_usage("k must be >= 1");
  if (p.reweight_b < 1) throw_usage("the re-weighting neighbourhood b must be >= 1");
  if (p.blur_sigma < 0) throw_usage("blur sigma must be >= 0");
  if (p.holdout_fraction < 0 || p.holdout_fraction >= 1)
    throw_usage("holdout fraction must be in [0, 1)");
  if (p.batch_size < 1) throw_usage("batch size must be >= 1");
  if (p.threads < 0) throw_usage("--threads must be >= 0");
}

void apply_threads(int threads) {
  const int n = threads > 0 ? threads : std::max(1, omp_get_num_procs());
  omp_set_num_threads(n);
  cv::setNumThreads(n);
}

// Available memory as the kernel estimates it; 0 when unknown.
double available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  double kib = 0;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024.0;
  return 0;
}

// Fails before hours of feature extraction when the bank cannot fit: every training patch is
// held until the coreset is chosen, plus the coreset's projection of it (with room for a copy)
// and its 16 subspace coordinates and slack per row.
void check_memory(double bank_bytes, int proj_dim, int64_t rows) {
  const double need = bank_bytes + static_cast<double>(rows) * (proj_dim * 2.0 + 17.0) * 4.0;
  const double have = available_bytes();
  if (have > 0 && need > 0.9 * have) {
    char msg[400];
    std::snprintf(msg, sizeof msg,
                  "the memory bank before subsampling needs about %.1f GB (%lld patches) but "
                  "only %.1f GB of memory is available; use fewer or smaller images "
                  "(--image-size) or a backbone with a coarser grid",
                  need / 1e9, static_cast<long long>(rows), have / 1e9);
    throw_bad_input("(training set)", msg);
  }
}

void log(const Callbacks& cb, LogLevel level, const std::string& message) {
  if (cb.log) cb.log(level, message);
}

// Reports the wall time of a scope to callbacks.timing, when set.
class StageTimer {
 public:
  StageTimer(const Callbacks& cb, const char* stage, int64_t items)
      : cb_(cb), stage_(stage), items_(items), start_(std::chrono::steady_clock::now()) {}
  ~StageTimer() {
    if (cb_.timing)
      cb_.timing(stage_,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(),
                 items_);
  }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

 private:
  const Callbacks& cb_;
  const char* stage_;
  int64_t items_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

struct Model::Impl {
  Params params;
  Calibration calibration;
  // The backbone as fitted: resolved names and the exact graph bytes.
  std::string backbone_identity;
  std::vector<std::string> layers;
  Normalization normalization = Normalization::m11;
  int image_size = 0;
  std::vector<uint8_t> onnx;
  Tensor bank;
  int grid_h = 0, grid_w = 0;
  std::string created_by;

  std::unique_ptr<NearestNeighbors> nn;
  // OpenCV's Net::forward is not re-entrant: predictions share the network under a lock.
  mutable std::mutex mutex;
  mutable std::unique_ptr<Backbone> backbone;
  std::string source_file;  // for messages about a loaded model

  Preprocess preprocess() const {
    return Preprocess{image_size,    params.crop,         normalization,
                      params.resize, params.resize_scale, params.intensity};
  }
  int input_size() const { return preprocess().input_size(); }
  EmbeddingParams embedding_params() const {
    return EmbeddingParams{params.embedding, params.patch_size, params.pretrain_dim,
                           params.target_dim};
  }
  ScoringParams scoring_params() const {
    return ScoringParams{params.k, params.squared_l2, params.reweight, params.reweight_b};
  }
  MapParams map_params() const {
    return MapParams{params.upsample, params.blur_sigma, params.blur_reflect101};
  }

  Backbone& net() const {
    if (!backbone) {
      backbone = make_backbone(onnx, layers, params.threads, params.engine, params.precision);
    }
    return *backbone;
  }

  // Loads and pre-processes a batch and runs the backbone: one map per layer. Unreadable images
  // are logged and left out; `ok` receives the positions (in paths) of the images that made it,
  // `sizes` their sizes. No maps when no image could be read.
  std::vector<Tensor> extract(const std::vector<fs::path>& paths, std::vector<size_t>& ok,
                              std::vector<cv::Size>& sizes, const Callbacks& cb) const {
    const Preprocess pre = preprocess();
    const int s = pre.input_size();
    const int64_t plane = 3LL * s * s;
    std::vector<cv::Mat> images(paths.size());
    std::vector<std::string> errors(paths.size());
    ok.clear();
    sizes.clear();
    auto decode = std::make_unique<StageTimer>(cb, "decode", static_cast<int64_t>(paths.size()));
    // One image per thread (large retina photographs take 10 ms each to decode). An error other
    // than a bad file is kept and thrown after the loop: exceptions must not leave an OpenMP
    // region.
    std::vector<std::exception_ptr> failures(paths.size());
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < paths.size(); ++i) {
      try {
        images[i] = load_rgb(paths[i]);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::bad_input) failures[i] = std::current_exception();
        errors[i] = e.what();
      } catch (...) {
        failures[i] = std::current_exception();
      }
    }
    for (const auto& f : failures) {
      if (f) std::rethrow_exception(f);
    }
    for (size_t i = 0; i < paths.size(); ++i) {
      if (images[i].empty()) {
        log(cb, LogLevel::warning, "skipped " + errors[i]);
        continue;
      }
      ok.push_back(i);
      sizes.push_back(images[i].size());
    }
    if (ok.empty()) return {};
    Tensor batch({static_cast<int64_t>(ok.size()), 3, s, s});
#pragma omp parallel for schedule(dynamic)
    for (size_t j = 0; j < ok.size(); ++j)
      preprocess_into(images[ok[j]], pre, batch.ptr() + j * plane);
    decode.reset();
    const auto n_ok = static_cast<int64_t>(ok.size());
    std::lock_guard<std::mutex> lock(mutex);
    const bool fresh = !backbone;
    Backbone& b = net();  // built outside the timer: a one-off cost
    if (fresh && cb.log) {
      for (const std::string& note : b.notes()) cb.log(LogLevel::warning, note);
    }
    StageTimer t(cb, "backbone", n_ok);
    return b.forward(batch);
  }

  // extract(), then the patch embedding of the images in `ok`.
  Embedding embed_batch(const std::vector<fs::path>& paths, std::vector<size_t>& ok,
                        std::vector<cv::Size>& sizes, const Callbacks& cb) const {
    const std::vector<Tensor> features = extract(paths, ok, sizes, cb);
    if (ok.empty()) return {};
    Embedding e;
    {
      StageTimer t(cb, "embedding", static_cast<int64_t>(ok.size()));
      e = embed(features, embedding_params());
    }
    if (bank.numel() > 0 && e.patches.dim(1) != bank.dim(1))
      throw_bad_input(source_file.empty() ? params.backbone : source_file,
                      "the backbone gives " + std::to_string(e.patches.dim(1)) +
                          "-dimensional patches but the memory bank holds " +
                          std::to_string(bank.dim(1)) +
                          ": the model was fitted with a different backbone or settings");
    return e;
  }

  // One image's patches against a bank: score and map.
  Prediction score(const NearestNeighbors& index, const float* rows,
                   const Callbacks& cb = {}) const {
    const int64_t n = static_cast<int64_t>(grid_h) * grid_w;
    ImageScores s;
    {
      StageTimer t(cb, "knn", 1);
      s = score_patches(index, rows, n, scoring_params());
    }
    Prediction p;
    p.score = s.score;
    StageTimer t(cb, "map", 1);
    p.map = anomaly_map(s.patch, grid_h, grid_w, input_size(), map_params());
    return p;
  }

  void finish(Prediction& p, double threshold) const {
    p.normalized_score = normalize_score(p.score, threshold, calibration);
    p.anomalous = p.score >= threshold;
  }

  json backbone_json() const {
    return json{{"identity", backbone_identity},
                {"layers", layers},
                {"normalization", to_string(normalization)},
                {"image_size", image_size},
                {"input_size", input_size()},
                {"onnx_sha256", sha256_hex(onnx.data(), onnx.size())}};
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

const Params& Model::params() const { return impl_->params; }
const Calibration& Model::calibration() const { return impl_->calibration; }
void Model::set_calibration(const Calibration& c) { impl_->calibration = c; }
int Model::map_size() const { return impl_->input_size(); }

double Model::backbone_flops_per_image() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->net().flops_per_image(impl_->input_size(), impl_->input_size());
}

double Model::knn_exact_per_patch() const {
  return impl_->nn && impl_->nn->bounded() ? impl_->nn->exact_per_query() : 0.0;
}

bool Model::knn_coarse_stage() const { return impl_->nn && impl_->nn->coarse_stage(); }

void Model::set_threads(int threads) {
  if (threads < 0) throw_usage("--threads must be >= 0");
  impl_->params.threads = threads;
  apply_threads(threads);
  impl_->backbone.reset();  // rebuilt with the new count on next use
  if (impl_->nn) impl_->nn->set_threads(threads);
}

void Model::set_engine(BackboneEngine engine) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->params.engine = engine;
  impl_->backbone.reset();
}

std::string Model::backbone_engine() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->net().engine();
}

void Model::set_precision(Precision precision) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->params.precision = precision;
  impl_->backbone.reset();
}

std::string Model::backbone_precision() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->net().precision();
}

Model Model::fit(const std::vector<fs::path>& images, const Params& params, const Callbacks& cb) {
  validate(params);
  if (images.empty()) throw_bad_input("(training set)", "no images to fit on");
  apply_threads(params.threads);
  auto impl = std::make_unique<Impl>();
  impl->params = params;
  Impl& m = *impl;

  // Resolve the backbone: a built-in name or an ONNX file.
  const auto builtin = builtin_backbone(params.backbone);
  if (builtin) {
    m.layers = params.layers.empty() ? builtin->default_layers : params.layers;
    m.normalization = params.normalization.empty()
                          ? builtin->normalization
                          : normalization_from_string(params.normalization);
    m.image_size = params.image_size > 0 ? params.image_size : builtin->default_image_size;
  } else {
    if (!fs::exists(params.backbone))
      throw_bad_input(params.backbone,
                      "not a built-in backbone (inception_v3, mobilenet_v2) and no such file");
    const BackboneInfo file = onnx_backbone_info(params.backbone);
    m.layers = params.layers.empty() ? file.default_layers : params.layers;
    if (m.layers.empty())
      throw_usage("--layers is required with this ONNX backbone (" + params.backbone + ")");
    if (params.normalization.empty() && !file.has_normalization)
      throw_usage("--normalize is required with this ONNX backbone (" + params.backbone + ")");
    m.normalization = params.normalization.empty()
                          ? file.normalization
                          : normalization_from_string(params.normalization);
    m.image_size = params.image_size > 0         ? params.image_size
                   : file.default_image_size > 0 ? file.default_image_size
                                                 : 224;
  }
  if (params.crop > m.image_size) throw_usage("--crop must not exceed the image size");
  if (params.resize != Resize::squash && params.crop > 0)
    throw_usage(std::string("--resize ") + to_string(params.resize) +
                " keeps the whole image: it cannot be combined with --crop");
  int largest = 0;
  if (params.resize == Resize::fixed || params.intensity == Intensity::automatic) {
    // What the rules need from the training images: the largest side (fixed: it fills S) and
    // the spread of mean brightness (automatic intensity). A decode each, a few per cent of
    // the fit; unreadable images are reported by the extraction below.
    std::vector<double> brightness;
    for (const fs::path& f : images) {
      try {
        const cv::Mat img = load_rgb(f);
        largest = std::max({largest, img.cols, img.rows});
        const cv::Scalar mean = cv::mean(img);
        brightness.push_back((mean[0] + mean[1] + mean[2]) / 3.0);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::bad_input) throw;
      }
    }
    if (params.intensity == Intensity::automatic) {
      double variation = 0;
      if (brightness.size() >= 2) {
        const double n_b = static_cast<double>(brightness.size());
        const double mean = std::accumulate(brightness.begin(), brightness.end(), 0.0) / n_b;
        double ss = 0;
        for (double b : brightness) ss += (b - mean) * (b - mean);
        variation = mean > 0 ? std::sqrt(ss / n_b) / mean : 0;
      }
      m.params.intensity =
          variation > kIntensityVariation ? Intensity::standardize : Intensity::keep;
      std::ostringstream msg;
      msg << std::setprecision(2) << "intensity: " << to_string(m.params.intensity)
          << " (the training images' mean brightness varies by " << variation
          << "; auto standardizes above " << kIntensityVariation << ")";
      log(cb, LogLevel::info, msg.str());
    }
  }
  if (params.resize == Resize::fixed) {
    if (largest > 0) m.params.resize_scale = static_cast<double>(m.image_size) / largest;
    log(cb, LogLevel::info,
        "fixed resize: every image scaled by " + std::to_string(m.params.resize_scale) +
            " (the largest training side, " + std::to_string(largest) + " px, fills " +
            std::to_string(m.image_size) + ")");
  }
  m.params.layers = m.layers;
  m.params.image_size = m.image_size;
  m.params.normalization = to_string(m.normalization);
  BackboneGraph graph = build_backbone_graph(params.backbone, m.layers, m.input_size());
  m.onnx = std::move(graph.onnx);
  m.backbone_identity = graph.identity;
  m.created_by = std::string("patchcore ") + PATCHCORE_VERSION;

  // Held-out images: chosen by the seed, scored against bank rows from the other images only.
  const size_t n = images.size();
  size_t n_hold = 0;
  if (n >= 2 && params.holdout_fraction > 0)
    n_hold =
        std::clamp<size_t>(static_cast<size_t>(std::lround(params.holdout_fraction * n)), 1, n - 1);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(params.seed ^ 0x9e3779b97f4a7c15ULL);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<bool> held(n, false);
  for (size_t i = 0; i < n_hold; ++i) held[order[i]] = true;

  // Features of every readable image, embedded straight into one [rows, D] bank: no buffer per
  // batch and no copy. The bank is allocated without zeroing, so that its pages are first
  // touched by the embedding's threads, in parallel: faulting in 4 GB of fresh pages took 4-7 s
  // on one thread here and 1.7-1.8 s on two (a zeroed std::vector faults them all on one).
  std::unique_ptr<float[]> all;
  size_t filled = 0;
  std::vector<uint8_t> row_held;  // per readable image
  int64_t dim = 0, rows_per_image = 0, n_ok = 0;
  const size_t bs = static_cast<size_t>(params.batch_size);
  for (size_t start = 0; start < n; start += bs) {
    std::vector<fs::path> batch(images.begin() + start, images.begin() + std::min(n, start + bs));
    std::vector<size_t> ok;
    std::vector<cv::Size> sizes;
    const std::vector<Tensor> maps = m.extract(batch, ok, sizes, cb);
    if (!ok.empty()) {
      const EmbeddingLayout layout = embedding_layout(maps, m.embedding_params());
      if (dim == 0) {
        dim = layout.dim;
        m.grid_h = layout.grid_h;
        m.grid_w = layout.grid_w;
        rows_per_image = static_cast<int64_t>(m.grid_h) * m.grid_w;
        check_memory(static_cast<double>(rows_per_image) * dim * 4.0 * static_cast<double>(n),
                     params.coreset_dim, rows_per_image * static_cast<int64_t>(n));
        all =
            std::make_unique_for_overwrite<float[]>(static_cast<size_t>(rows_per_image * dim) * n);
      }
      PATCHCORE_ASSERT(layout.dim == dim && layout.rows == rows_per_image * std::ssize(ok));
      {
        StageTimer t(cb, "embedding", std::ssize(ok));
        embed_into(maps, m.embedding_params(), all.get() + filled);
      }
      filled += static_cast<size_t>(layout.rows * dim);
      for (size_t j : ok) row_held.push_back(held[start + j] ? 1 : 0);
      n_ok += static_cast<int64_t>(ok.size());
    }
    if (cb.progress) cb.progress("features", static_cast<int64_t>(std::min(n, start + bs)), n);
  }
  if (n_ok == 0)
    throw_bad_input("(training set)", "none of the " + std::to_string(n) + " images could be read");
  const MatrixView features{all.get(), n_ok * rows_per_image, dim};

  // Memory bank: greedy coreset over every training patch.
  CoresetParams cp{params.coreset_ratio, params.coreset_min, params.coreset_dim, params.seed, 10,
                   params.threads};
  std::vector<int64_t> picks;
  {
    StageTimer t(cb, "coreset", features.rows);
    picks = greedy_coreset(features, cp, [&](int64_t done, int64_t total) {
      if (cb.progress) cb.progress("coreset", done, total);
    });
  }
  m.bank = Tensor({static_cast<int64_t>(picks.size()), dim});
  for (size_t i = 0; i < picks.size(); ++i)
    std::copy_n(features.row(picks[i]), dim, m.bank.row(static_cast<int64_t>(i)));

  // Calibration from the held-out images, scored as if unseen.
  std::vector<float> hold_scores, hold_pixels;
  std::vector<int64_t> sub_rows;
  for (int64_t r : picks)
    if (!row_held[static_cast<size_t>(r / rows_per_image)]) sub_rows.push_back(r);
  const bool any_held =
      std::any_of(row_held.begin(), row_held.end(), [](uint8_t h) { return h != 0; });
  if (any_held && !sub_rows.empty()) {
    StageTimer timer(cb, "holdout",
                     std::count(row_held.begin(), row_held.end(), static_cast<uint8_t>(1)));
    Tensor sub({static_cast<int64_t>(sub_rows.size()), dim});
    for (size_t i = 0; i < sub_rows.size(); ++i)
      std::copy_n(features.row(sub_rows[i]), dim, sub.row(static_cast<int64_t>(i)));
    NearestNeighbors sub_nn(std::move(sub), params.threads);
    for (size_t img = 0; img < row_held.size(); ++img) {
      if (!row_held[img]) continue;
      Prediction p = m.score(sub_nn, features.row(static_cast<int64_t>(img) * rows_per_image));
      hold_scores.push_back(static_cast<float>(p.score));
      // Every 4th pixel in each direction is plenty for a quantile and keeps memory flat.
      for (int y = 0; y < p.map.height; y += 4)
        for (int x = 0; x < p.map.width; x += 4)
          hold_pixels.push_back(p.map.values[static_cast<size_t>(y) * p.map.width + x]);
    }
    m.calibration = calibrate_from_normal(hold_scores, hold_pixels);
    log(cb, LogLevel::info,
        "threshold " + std::to_string(m.calibration.image_threshold) + " from " +
            std::to_string(hold_scores.size()) + " held-out normal images");
  } else {
    // Nothing to hold out: the best guess is the bank's own spread (each bank row's distance
    // to its nearest other row), which a user should replace through eval or --threshold.
    NearestNeighbors self(m.bank, params.threads);
    const int64_t rows = m.bank.dim(0);
    std::vector<float> d(static_cast<size_t>(rows) * 2);
    std::vector<int64_t> idx(static_cast<size_t>(rows) * 2);
    const int kk = rows >= 2 ? 2 : 1;
    self.search(m.bank.ptr(), rows, kk, d.data(), idx.data());
    std::vector<float> nearest;
    for (int64_t r = 0; r < rows; ++r) {
      const float sq = d[static_cast<size_t>(r) * kk + kk - 1];
      nearest.push_back(params.squared_l2 ? sq : std::sqrt(std::max(sq, 0.0f)));
    }
    m.calibration = calibrate_from_normal(nearest, nearest);
    m.calibration.source = "guess";
    log(cb, LogLevel::warning,
        "too few training images to hold any out: the threshold is a guess; set one with "
        "`patchcore eval --save-threshold` or `predict --threshold`");
  }
  m.nn = std::make_unique<NearestNeighbors>(m.bank, params.threads);
  return Model(std::move(impl));
}

std::vector<Prediction> Model::predict(const std::vector<fs::path>& images,
                                       const Callbacks& cb) const {
  const Impl& m = *impl_;
  apply_threads(m.params.threads);
  std::vector<Prediction> out;
  const size_t bs = static_cast<size_t>(m.params.batch_size);
  for (size_t start = 0; start < images.size(); start += bs) {
    std::vector<fs::path> batch(images.begin() + start,
                                images.begin() + std::min(images.size(), start + bs));
    std::vector<size_t> ok;
    std::vector<cv::Size> sizes;
    Embedding e = m.embed_batch(batch, ok, sizes, cb);
    const int64_t rows = static_cast<int64_t>(e.grid_h) * e.grid_w;
    for (size_t j = 0; j < ok.size(); ++j) {
      Prediction p = m.score(*m.nn, e.patches.row(static_cast<int64_t>(j) * rows), cb);
      p.path = batch[ok[j]];
      p.image_height = sizes[j].height;
      p.image_width = sizes[j].width;
      m.finish(p, m.calibration.image_threshold);
      out.push_back(std::move(p));
    }
    if (cb.progress)
      cb.progress("predict", static_cast<int64_t>(std::min(images.size(), start + bs)),
                  static_cast<int64_t>(images.size()));
  }
  return out;
}

Prediction Model::predict(const fs::path& image) const {
  Callbacks silent;
  std::string error;
  silent.log = [&](LogLevel, const std::string& message) { error = message; };
  std::vector<Prediction> p = predict(std::vector<fs::path>{image}, silent);
  if (p.empty()) {
    load_rgb(image);  // rethrows the reason with the file's name
    throw_bad_input(image.string(), error);
  }
  return std::move(p.front());
}

void Model::save(const fs::path& file) const {
  const Impl& m = *impl_;
  ModelFileContents c;
  c.metadata["params"] = params_to_json(m.params).dump();
  c.metadata["backbone"] = m.backbone_json().dump();
  c.metadata["calibration"] = calibration_to_json(m.calibration).dump();
  c.metadata["grid"] = json{m.grid_h, m.grid_w}.dump();
  c.metadata["created_by"] = m.created_by;
  c.f32["memory_bank"] = m.bank;
  c.u8["backbone_onnx"] = m.onnx;
  write_model_file(file, c);
}

Model Model::load(const fs::path& file, const Callbacks&) {
  ModelFileContents c = read_model_file(file);
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.source_file = file.string();
  try {
    for (const char* key : {"params", "backbone", "calibration", "grid"})
      if (!c.metadata.count(key))
        throw_bad_input(file.string(), std::string("no '") + key + "' entry");
    m.params = params_from_json(json::parse(c.metadata.at("params")));
    const json b = json::parse(c.metadata.at("backbone"));
    m.backbone_identity = b.at("identity").get<std::string>();
    m.layers = b.at("layers").get<std::vector<std::string>>();
    m.normalization = normalization_from_string(b.at("normalization").get<std::string>());
    m.image_size = b.at("image_size").get<int>();
    content_rect(cv::Size(1, 1), m.preprocess());  // throws on a geometry that cannot work
    m.calibration = calibration_from_json(json::parse(c.metadata.at("calibration")));
    const json g = json::parse(c.metadata.at("grid"));
    m.grid_h = g.at(0).get<int>();
    m.grid_w = g.at(1).get<int>();
    m.created_by = c.metadata.count("created_by") ? c.metadata.at("created_by") : "";
    if (!c.f32.count("memory_bank") || !c.u8.count("backbone_onnx"))
      throw_bad_input(file.string(), "the memory bank or the backbone is missing");
    m.bank = std::move(c.f32.at("memory_bank"));
    m.onnx = std::move(c.u8.at("backbone_onnx"));
    if (m.bank.shape.size() != 2 || m.bank.dim(0) < 1)
      throw_bad_input(file.string(), "the memory bank is empty or not a matrix");
    if (sha256_hex(m.onnx.data(), m.onnx.size()) != b.at("onnx_sha256").get<std::string>())
      throw_bad_input(file.string(),
                      "the stored backbone does not match the backbone the model was fitted "
                      "with (sha256 differs)");
    if (m.grid_h < 1 || m.grid_w < 1 || m.image_size < 1)
      throw_bad_input(file.string(), "invalid grid or image size");
    validate(m.params);
  } catch (const json::exception& e) {
    throw_bad_input(file.string(), std::string("invalid model description: ") + e.what());
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::bad_input) throw;
    throw_bad_input(file.string(), std::string("invalid model description: ") + e.what());
  }
  m.params.threads = 0;
  m.nn = std::make_unique<NearestNeighbors>(m.bank, 0);
  return Model(std::move(impl));
}

std::string Model::info_json() const {
  const Impl& m = *impl_;
  json j{{"format", kModelFormat},
         {"format_version", kModelFormatVersion},
         {"created_by", m.created_by},
         {"backbone", m.backbone_json()},
         {"params", params_to_json(m.params)},
         {"calibration", calibration_to_json(m.calibration)},
         {"memory_bank", {{"rows", m.bank.dim(0)}, {"dim", m.bank.dim(1)}}},
         {"grid", {m.grid_h, m.grid_w}},
         {"map_size", m.input_size()}};
  return j.dump(2);
}

}  // namespace patchcore
