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
#include <limits>
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

json calibration_to_json(const Calibration& c) {
  return json{{"image_threshold", c.image_threshold},
              {"pixel_threshold", c.pixel_threshold},
              {"min_score", c.min_score},
              {"max_score", c.max_score},
              {"source", c.source}};
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

class FieldReader;  // the checked reading of a model file's entries (Model::load)

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
  int file_format_version = kModelFormatVersion;  // of the file loaded (or to be written)
  bool checksums_verified = false;                // loaded: every byte matched its checksum

  // Load: the file's entries into this, each value checked (Model::load).
  void read_checked(ModelFileContents& c);
  void read_bank(ModelFileContents& c, const FieldReader& r);
  nlohmann::json read_backbone(const FieldReader& r);
  nlohmann::json read_params(const FieldReader& r, const nlohmann::json& backbone);
  void read_grid(const FieldReader& r, const nlohmann::json& params);
  void read_calibration(const FieldReader& r);

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
    if (!backbone) backbone = make_backbone(onnx, layers, params.threads, params.engine);
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
    try {
      Backbone& b = net();  // built outside the timer: a one-off cost
      StageTimer t(cb, "backbone", n_ok);
      return b.forward(batch);
    } catch (const Error& e) {
      // A loaded model's graph that does not take its own input size is a bad model file.
      if (source_file.empty() || e.kind() == ErrorKind::internal) throw;
      throw_bad_input(source_file, std::string("the stored backbone cannot run: ") + e.what());
    }
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
    check_embedding(e);
    return e;
  }

  // A model file's grid sizes every prediction's rows, and its bank's width every distance:
  // both must be what the backbone gives before anything is indexed with them.
  void check_embedding(const Embedding& e) const {
    if (bank.numel() == 0) return;  // fitting: the bank is made from these
    const std::string who = source_file.empty() ? params.backbone : source_file;
    if (e.grid_h != grid_h || e.grid_w != grid_w)
      throw_bad_input(who, "the backbone gives a " + std::to_string(e.grid_h) + "x" +
                               std::to_string(e.grid_w) +
                               " patch grid but the model's 'grid' says " + std::to_string(grid_h) +
                               "x" + std::to_string(grid_w));
    if (e.patches.dim(1) != bank.dim(1))
      throw_bad_input(who, "the backbone gives " + std::to_string(e.patches.dim(1)) +
                               "-dimensional patches but the memory bank holds " +
                               std::to_string(bank.dim(1)) +
                               ": the model was fitted with a different backbone or settings");
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

// ---------------------------------------------------------------- loading, every value checked
namespace {

// Reads the metadata entries of a model file. Every value a prediction relies on is checked
// against its range and against what it describes before anything is sized or indexed with it;
// a bad one names the file and the field ("params.k", "grid", ...). A crafted file carries
// valid checksums, so this is the guard, not the checksum.
class FieldReader {
 public:
  FieldReader(const ModelFileContents& c, std::string file) : c_(c), file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw_bad_input(file_, "invalid model: '" + field + "' " + what);
  }

  json entry(const char* key) const {
    auto it = c_.metadata.find(key);
    if (it == c_.metadata.end()) throw_bad_input(file_, std::string("no '") + key + "' entry");
    json j = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) fail(key, "is not valid JSON");
    return j;
  }

  const json& at(const json& j, const std::string& entry, const char* field) const {
    if (!j.is_object()) fail(entry, "is not a JSON object");
    auto it = j.find(field);
    if (it == j.end()) fail(entry + "." + field, "is missing");
    return *it;
  }

  std::string text(const json& j, const std::string& entry, const char* field) const {
    const json& v = at(j, entry, field);
    if (!v.is_string()) fail(entry + "." + field, "is not a string");
    return v.get<std::string>();
  }

  bool flag(const json& j, const std::string& entry, const char* field) const {
    const json& v = at(j, entry, field);
    if (!v.is_boolean()) fail(entry + "." + field, "is not true or false");
    return v.get<bool>();
  }

  int64_t integer(const json& j, const std::string& entry, const char* field, int64_t lo,
                  int64_t hi) const {
    const json& v = at(j, entry, field);
    if (!v.is_number_integer() ||
        (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)))
      fail(entry + "." + field, "is not an integer: " + v.dump());
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi)
      fail(entry + "." + field, "is " + std::to_string(x) + ", outside [" + std::to_string(lo) +
                                    ", " + std::to_string(hi) + "]");
    return x;
  }

  double number(const json& j, const std::string& entry, const char* field, double lo,
                double hi) const {
    const json& v = at(j, entry, field);
    if (!v.is_number()) fail(entry + "." + field, "is not a number: " + v.dump());
    const double x = v.get<double>();
    if (!std::isfinite(x) || x < lo || x > hi)
      fail(entry + "." + field,
           "is " + v.dump() + ", outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
  }

  std::string choice(const json& j, const std::string& entry, const char* field,
                     std::initializer_list<const char*> allowed) const {
    const std::string v = text(j, entry, field);
    for (const char* a : allowed)
      if (v == a) return v;
    std::string list;
    for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
    fail(entry + "." + field, "is '" + v + "', not one of " + list);
  }

  std::vector<std::string> names(const json& j, const std::string& entry, const char* field) const {
    const json& v = at(j, entry, field);
    if (!v.is_array() || v.empty()) fail(entry + "." + field, "is not a non-empty list");
    std::vector<std::string> out;
    for (const json& x : v) {
      if (!x.is_string() || x.get<std::string>().empty())
        fail(entry + "." + field, "holds something other than names");
      out.push_back(x.get<std::string>());
    }
    return out;
  }

 private:
  const ModelFileContents& c_;
  std::string file_;
};

// Bounds that only keep a damaged or crafted value from sizing allocations or loops; any model
// fit writes is well inside them.
constexpr int64_t kMaxBatch = 4096;
constexpr int64_t kMaxDim = 1 << 16;

}  // namespace

void Model::Impl::read_checked(ModelFileContents& c) {
  const FieldReader r(c, source_file);
  read_bank(c, r);  // first: its shape bounds k and the re-weighting neighbourhood
  const json b = read_backbone(r);
  const json p = read_params(r, b);
  read_grid(r, p);
  read_calibration(r);
  created_by = c.metadata.count("created_by") ? c.metadata.at("created_by") : "";
}

void Model::Impl::read_bank(ModelFileContents& c, const FieldReader& r) {
  auto bank_it = c.f32.find("memory_bank");
  if (bank_it == c.f32.end()) throw_bad_input(source_file, "no 'memory_bank' tensor (F32)");
  auto onnx_it = c.u8.find("backbone_onnx");
  if (onnx_it == c.u8.end()) throw_bad_input(source_file, "no 'backbone_onnx' tensor (U8)");
  bank = std::move(bank_it->second);
  onnx = std::move(onnx_it->second);
  if (bank.shape.size() != 2 || bank.dim(0) < 1 || bank.dim(1) < 1 || bank.dim(1) > kMaxDim)
    r.fail("memory_bank", "is not a [rows >= 1, dim in 1.." + std::to_string(kMaxDim) + "] matrix");
  // Branch-free (NaN compares false) so that it vectorises: a pass over memory, not a loop.
  int bad = 0;
  const float* v = bank.ptr();
  constexpr float kMax = std::numeric_limits<float>::max();
#pragma omp parallel for reduction(| : bad)
  for (int64_t i = 0; i < bank.numel(); ++i) bad |= !(std::fabs(v[i]) <= kMax);
  if (bad) r.fail("memory_bank", "holds a NaN or infinite value");
}

json Model::Impl::read_backbone(const FieldReader& r) {
  const json b = r.entry("backbone");
  backbone_identity = r.text(b, "backbone", "identity");
  layers = r.names(b, "backbone", "layers");
  normalization = normalization_from_string(
      r.choice(b, "backbone", "normalization", {"imagenet", "m11", "unit"}));
  image_size = static_cast<int>(r.integer(b, "backbone", "image_size", 32, 4096));
  if (sha256_hex(onnx.data(), onnx.size()) != r.text(b, "backbone", "onnx_sha256"))
    throw_bad_input(source_file,
                    "the stored backbone does not match the backbone the model was fitted "
                    "with (sha256 differs)");
  return b;
}

json Model::Impl::read_params(const FieldReader& r, const json& b) {
  const int64_t rows = bank.dim(0), dim = bank.dim(1);
  const json p = r.entry("params");
  const std::string e = "params";
  params.preset = p.contains("preset") ? r.text(p, e, "preset") : "";
  params.backbone = r.text(p, e, "backbone");
  params.layers = r.names(p, e, "layers");
  if (params.layers != layers) r.fail("params.layers", "differ from backbone.layers");
  params.normalization = r.text(p, e, "normalization");
  if (params.normalization != to_string(normalization))
    r.fail("params.normalization", "differs from backbone.normalization");
  params.image_size = static_cast<int>(r.integer(p, e, "image_size", 32, 4096));
  if (params.image_size != image_size)
    r.fail("params.image_size", "differs from backbone.image_size");
  params.crop = static_cast<int>(r.integer(p, e, "crop", 0, image_size));
  // Absent in files written before these options existed: their defaults then.
  params.resize = resize_from_string(
      p.contains("resize") ? r.choice(p, e, "resize", {"squash", "pad", "fixed"}) : "squash");
  params.resize_scale = p.contains("resize_scale") ? r.number(p, e, "resize_scale", 0, 1e6) : 0;
  params.intensity = intensity_from_string(
      p.contains("intensity") ? r.choice(p, e, "intensity", {"keep", "standardize"}) : "keep");
  params.embedding = r.choice(p, e, "embedding", {"paper", "concat"}) == "paper"
                         ? EmbeddingMode::paper
                         : EmbeddingMode::concat;
  params.pretrain_dim = static_cast<int>(r.integer(p, e, "pretrain_dim", 1, kMaxDim));
  params.target_dim = static_cast<int>(r.integer(p, e, "target_dim", 1, kMaxDim));
  if (params.embedding == EmbeddingMode::paper && dim != params.target_dim)
    r.fail("memory_bank", "has " + std::to_string(dim) +
                              "-dimensional rows but the paper "
                              "embedding gives params.target_dim = " +
                              std::to_string(params.target_dim));
  params.coreset_ratio = r.number(p, e, "coreset_ratio", 1e-12, 1e12);
  params.coreset_dim = static_cast<int>(r.integer(p, e, "coreset_dim", 1, kMaxDim));
  params.coreset_min = p.contains("coreset_min") ? r.integer(p, e, "coreset_min", 0, INT64_MAX) : 0;
  const json& seed = r.at(p, e, "seed");
  if (!seed.is_number_unsigned()) r.fail("params.seed", "is not an unsigned integer");
  params.seed = seed.get<uint64_t>();
  params.k = static_cast<int>(r.integer(p, e, "k", 1, std::min<int64_t>(rows, 1 << 20)));
  params.squared_l2 = r.flag(p, e, "squared_l2");
  params.reweight = r.flag(p, e, "reweight");
  params.reweight_b =
      static_cast<int>(r.integer(p, e, "reweight_b", 1, std::min<int64_t>(rows, 1 << 20)));
  params.upsample = r.choice(p, e, "upsample", {"bilinear", "nearest"}) == "nearest"
                        ? Upsample::nearest
                        : Upsample::bilinear;
  params.blur_reflect101 = p.contains("blur_reflect101") && r.flag(p, e, "blur_reflect101");
  params.holdout_fraction = r.number(p, e, "holdout_fraction", 0, 0.999999);
  params.batch_size = static_cast<int>(r.integer(p, e, "batch_size", 1, kMaxBatch));
  try {
    content_rect(cv::Size(1, 1), preprocess());  // throws on a geometry that cannot work
  } catch (const Error& err) {
    throw_bad_input(source_file, std::string("invalid model: 'params' ") + err.what());
  }
  const int s = input_size();
  // A blur wider than the map would only smear it flat (and size a huge kernel).
  params.blur_sigma = r.number(p, e, "blur_sigma", 0, s);
  if (r.integer(b, "backbone", "input_size", 1, 4096) != s)
    r.fail("backbone.input_size", "differs from the size params give (" + std::to_string(s) + ")");
  return p;
}

void Model::Impl::read_grid(const FieldReader& r, const json& p) {
  const std::string e = "params";
  const int s = input_size();
  const json g = r.entry("grid");
  if (!g.is_array() || g.size() != 2) r.fail("grid", "is not [height, width]");
  const json grid_obj{{"h", g[0]}, {"w", g[1]}};
  // A feature map is never larger than the image it comes from; the exact grid is the
  // backbone's, checked against the stored one before each prediction is indexed with it.
  grid_h = static_cast<int>(r.integer(grid_obj, "grid", "h", 1, s));
  grid_w = static_cast<int>(r.integer(grid_obj, "grid", "w", 1, s));
  params.patch_size =
      static_cast<int>(r.integer(p, e, "patch_size", 1, 2 * std::max(grid_h, grid_w) + 1));
  if (params.patch_size % 2 == 0) r.fail("params.patch_size", "is even");
}

void Model::Impl::read_calibration(const FieldReader& r) {
  const json cal = r.entry("calibration");
  const std::string ce = "calibration";
  const double big = 1e300;
  calibration.image_threshold = r.number(cal, ce, "image_threshold", -big, big);
  calibration.pixel_threshold = r.number(cal, ce, "pixel_threshold", -big, big);
  calibration.min_score = r.number(cal, ce, "min_score", -big, big);
  calibration.max_score = r.number(cal, ce, "max_score", -big, big);
  calibration.source = r.text(cal, ce, "source");
}

Model Model::load(const fs::path& file, const Callbacks&) {
  ModelFileContents c = read_model_file(file);
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.source_file = file.string();
  m.file_format_version = c.format_version;
  m.checksums_verified = c.checksums_verified;
  m.read_checked(c);
  m.params.threads = 0;
  m.nn = std::make_unique<NearestNeighbors>(m.bank, 0);
  return Model(std::move(impl));
}

std::string Model::verify() const {
  const Impl& m = *impl_;
  const int s = m.input_size();
  // A mid-grey image: any image exercises the shapes; its score must come out finite.
  const cv::Mat grey(s, s, CV_8UC3, cv::Scalar(128, 128, 128));
  Tensor batch({1, 3, s, s});
  preprocess_into(grey, m.preprocess(), batch.ptr());
  std::vector<Tensor> features;
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    try {
      features = m.net().forward(batch);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::internal) throw;
      throw_bad_input(m.source_file, std::string("the stored backbone cannot run: ") + e.what());
    }
  }
  const Embedding e = embed(features, m.embedding_params());
  m.check_embedding(e);
  const Prediction p = m.score(*m.nn, e.patches.row(0));
  if (!std::isfinite(p.score))
    throw_bad_input(m.source_file, "a blank image gets a non-finite score");
  const std::string shapes = "every value checked, the backbone runs and gives the stored " +
                             std::to_string(m.grid_h) + "x" + std::to_string(m.grid_w) +
                             " grid of " + std::to_string(m.bank.dim(1)) + "-dimensional patches";
  const std::string version = "format version " + std::to_string(m.file_format_version);
  if (m.checksums_verified) return "ok: " + version + ", every byte matches its checksum, " + shapes;
  return "ok, but " + version +
         " carries no checksums: damage inside the memory bank or a text entry cannot be "
         "detected; " +
         shapes;
}

std::string Model::info_json() const {
  const Impl& m = *impl_;
  json j{{"format", kModelFormat},
         {"format_version", m.file_format_version},
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
