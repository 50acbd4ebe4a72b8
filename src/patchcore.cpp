// The public Model: the stages wired together (fit, predict, save, load).
#include "patchcore/patchcore.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
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
#include "call_threads.h"
#include "coreset.h"
#include "embedding.h"
#include "error.h"
#include "feature_store.h"
#include "image.h"
#include "knn.h"
#include "model_file.h"
#include "overlay.h"
#include "params.h"
#include "scoring.h"
#include "sha256.h"
#include "threshold.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace patchcore {
namespace {

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

// Available memory as the kernel estimates it; 0 when unknown.
double available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  double kib = 0;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024.0;
  return 0;
}

// Share of MemAvailable fit's features may take by default (Params::max_memory): the rest is
// the process's own (libraries, network, decoded batches) and the other programs'.
constexpr double kMemoryFraction = 0.8;

// Which of n images are held out: fraction of them (at least 1, at most n - 1), shuffled by
// the seed.
std::vector<bool> choose_held(size_t n, double fraction, uint64_t seed) {
  size_t n_hold = 0;
  if (n >= 2 && fraction > 0)
    n_hold = std::clamp<size_t>(static_cast<size_t>(std::lround(fraction * n)), 1, n - 1);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<bool> held(n, false);
  for (size_t i = 0; i < n_hold; ++i) held[order[i]] = true;
  return held;
}

// Rows of the store, in the given order.
Tensor gather_rows(const FeatureStore& store, const std::vector<int64_t>& rows) {
  Tensor out({std::ssize(rows), store.dim()});
  store.read_rows(rows, out.ptr());
  return out;
}

// a [m, d] then b [k, d].
Tensor stack_rows(const Tensor& a, const Tensor& b) {
  PATCHCORE_ASSERT(a.dim(1) == b.dim(1));
  Tensor out({a.dim(0) + b.dim(0), a.dim(1)});
  std::copy(a.data.begin(), a.data.end(), out.data.begin());
  std::copy(b.data.begin(), b.data.end(), out.data.begin() + a.numel());
  return out;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
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

  // Searched by concurrent calls: built on the calling thread's OpenMP count (0), so that
  // each search runs on its call's threads; its statistics are atomic.
  std::unique_ptr<NearestNeighbors> nn;
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

  // What lets a model grow (update, merge), optional entries of the file: the coverage radius
  // (the greedy coreset's last distance, in its projected space; < 0: unknown, an older file),
  // the patches the bank was chosen from, the held-out scores behind the calibration, the
  // history of fits and updates, and which shard a partial model covers (null: none).
  double radius = -1;
  int64_t patches = 0;
  std::vector<float> hold_scores, hold_pixels;
  json history = json::array();
  json shard;

  // Patch features of a set of images, with which of the images are held out.
  struct Scan {
    std::unique_ptr<FeatureStore> store;
    std::vector<uint8_t> row_held;  // per readable image
    int64_t rows_per_image = 0;
    int64_t images() const { return std::ssize(row_held); }
    bool any_held() const {
      return std::any_of(row_held.begin(), row_held.end(), [](uint8_t h) { return h != 0; });
    }
  };
  // Fit's stages, shared by update: scan the images into a feature store, score the held-out
  // ones, calibrate.
  Scan scan(size_t n, const std::function<cv::Mat(size_t)>& load, const std::vector<bool>& held,
            const Callbacks& cb);
  std::unique_ptr<FeatureStore> make_store(int64_t dim, int64_t rows_per_image, size_t n,
                                           const Callbacks& cb) const;
  void check_dim(int64_t dim) const;
  void score_held(const NearestNeighbors& index, const Scan& s, const Callbacks& cb);
  void calibrate(const Callbacks& cb);
  int64_t update(size_t n, const std::function<cv::Mat(size_t)>& load, const UpdateParams& up,
                 const Callbacks& cb);
  // A new Impl with this one's settings and backbone, no bank.
  std::unique_ptr<Impl> same_settings() const;
  std::string name() const { return source_file.empty() ? std::string("(model)") : source_file; }
  void load_growth(ModelFileContents& c, const fs::path& file);
  // Backbones, built on first use. A forward is not re-entrant (OpenCV's Net, the oneDNN
  // engine's buffers), so each call takes one from the pool for its batch and gives it back;
  // when all are busy another is built, up to one per core (each holds the graph's weights),
  // beyond which calls wait. Built on the calling thread's OpenMP count (0): a forward runs on
  // its call's threads.
  mutable std::mutex pool_mutex;
  mutable std::condition_variable pool_returned;
  mutable std::vector<std::unique_ptr<Backbone>> idle;
  mutable int built = 0;

  // A backbone of the pool for one scope.
  class Lease {
   public:
    explicit Lease(const Impl& m) : m_(m), net_(m.acquire(&first_)) {}
    ~Lease() { m_.release(std::move(net_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Backbone& operator*() const { return *net_; }
    Backbone* operator->() const { return net_.get(); }
    // Whether this lease built the pool's first backbone (whose notes are then logged once).
    bool first() const { return first_; }

   private:
    const Impl& m_;
    bool first_ = false;
    std::unique_ptr<Backbone> net_;
  };

  std::unique_ptr<Backbone> acquire(bool* first) const {
    std::unique_lock<std::mutex> lock(pool_mutex);
    pool_returned.wait(lock, [&] { return !idle.empty() || built < available_cores(); });
    if (!idle.empty()) {
      std::unique_ptr<Backbone> b = std::move(idle.back());
      idle.pop_back();
      return b;
    }
    *first = built == 0;
    ++built;
    lock.unlock();  // building takes a while: others may use the idle ones meanwhile
    try {
      return make_backbone(onnx, layers, 0, params.engine, params.precision);
    } catch (...) {
      lock.lock();
      --built;
      pool_returned.notify_one();
      throw;
    }
  }

  void release(std::unique_ptr<Backbone> b) const {
    {
      std::lock_guard<std::mutex> lock(pool_mutex);
      idle.push_back(std::move(b));
    }
    pool_returned.notify_one();
  }

  // Drops the built backbones (the engine changed); no call may be running.
  void reset_pool() {
    std::lock_guard<std::mutex> lock(pool_mutex);
    PATCHCORE_ASSERT(static_cast<int>(idle.size()) == built);
    idle.clear();
    built = 0;
  }

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

  // Loads and pre-processes a batch of `count` images (load(i) decodes image i, throwing
  // Error(bad_input) when it cannot) and runs the backbone: one map per layer. Unreadable images
  // are logged and left out; `ok` receives the positions of the images that made it, `sizes`
  // their sizes. No maps when no image could be read.
  std::vector<Tensor> extract(size_t count, const std::function<cv::Mat(size_t)>& load,
                              std::vector<size_t>& ok, std::vector<cv::Size>& sizes,
                              const Callbacks& cb) const {
    const Preprocess pre = preprocess();
    const int s = pre.input_size();
    const int64_t plane = 3LL * s * s;
    std::vector<cv::Mat> images(count);
    std::vector<std::string> errors(count);
    ok.clear();
    sizes.clear();
    auto decode = std::make_unique<StageTimer>(cb, "decode", static_cast<int64_t>(count));
    // One image per thread (large retina photographs take 10 ms each to decode). An error other
    // than a bad file is kept and thrown after the loop: exceptions must not leave an OpenMP
    // region.
    std::vector<std::exception_ptr> failures(count);
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < count; ++i) {
      try {
        images[i] = load(i);
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
    for (size_t i = 0; i < count; ++i) {
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
    const Lease net(*this);  // taken outside the timer: building one is a one-off cost
    if (net.first() && cb.log) {
      for (const std::string& note : net->notes()) cb.log(LogLevel::warning, note);
    }
    try {
      StageTimer t(cb, "backbone", n_ok);
      return net->forward(batch);
    } catch (const Error& e) {
      // A loaded model's graph that does not take its own input size is a bad model file.
      if (source_file.empty() || e.kind() == ErrorKind::internal) throw;
      throw_bad_input(source_file, std::string("the stored backbone cannot run: ") + e.what());
    }
  }

  // extract(), then the patch embedding of the images in `ok`.
  Embedding embed_batch(size_t count, const std::function<cv::Mat(size_t)>& load,
                        std::vector<size_t>& ok, std::vector<cv::Size>& sizes,
                        const Callbacks& cb) const {
    const std::vector<Tensor> features = extract(count, load, ok, sizes, cb);
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

  // Fits on n images, image i decoded by load(i) as 8-bit RGB.
  static std::unique_ptr<Impl> fit(size_t n, const std::function<cv::Mat(size_t)>& load,
                                   const Params& params, const Callbacks& cb);

  // Batches of images, image i decoded by load(i) and named name(i).
  std::vector<Prediction> predict(size_t count, const std::function<cv::Mat(size_t)>& load,
                                  const std::function<std::string(size_t)>& name,
                                  const Callbacks& cb) const;

  json backbone_json() const {
    return json{{"identity", backbone_identity},
                {"layers", layers},
                {"normalization", to_string(normalization)},
                {"image_size", image_size},
                {"input_size", input_size()},
                {"onnx_sha256", sha256_hex(onnx.data(), onnx.size())}};
  }
};

void set_opencv_threads(int threads) {
  if (threads < 0)
    throw_usage("threads must be >= 0 (0: all cores), got " + std::to_string(threads));
  cv::setNumThreads(threads > 0 ? threads : available_cores());
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

const Params& Model::params() const { return impl_->params; }
const Calibration& Model::calibration() const { return impl_->calibration; }
void Model::set_calibration(const Calibration& c) { impl_->calibration = c; }
int Model::map_size() const { return impl_->input_size(); }

double Model::backbone_flops_per_image() const {
  const Impl::Lease net(*impl_);
  return net->flops_per_image(impl_->input_size(), impl_->input_size());
}

std::string Model::knn_search() const {
  return impl_->nn ? impl_->nn->method() : "brute force";
}

double Model::knn_exact_per_patch() const {
  return impl_->nn ? impl_->nn->exact_per_query() : 0.0;
}

bool Model::knn_coarse_stage() const { return impl_->nn && impl_->nn->coarse_stage(); }

void Model::set_threads(int threads) {
  if (threads < 0)
    throw_usage("threads must be >= 0 (0: all cores), got " + std::to_string(threads));
  impl_->params.threads = threads;
}

void Model::set_engine(BackboneEngine engine) {
  impl_->reset_pool();
  impl_->params.engine = engine;
}

std::string Model::backbone_engine() const {
  const Impl::Lease net(*impl_);
  return net->engine();
}

void Model::set_precision(Precision precision) {
  impl_->reset_pool();
  impl_->params.precision = precision;
}

std::string Model::backbone_precision() const {
  const Impl::Lease net(*impl_);
  return net->precision();
}

Model Model::fit(const std::vector<fs::path>& images, const Params& params, const Callbacks& cb) {
  return Model(Impl::fit(
      images.size(), [&](size_t i) { return load_rgb(images[i]); }, params, cb));
}

Model Model::fit(const std::vector<ImageView>& images, const Params& params, const Callbacks& cb) {
  for (const ImageView& v : images) check_view(v);
  return Model(Impl::fit(
      images.size(), [&](size_t i) { return view_rgb(images[i]); }, params, cb));
}

std::unique_ptr<Model::Impl> Model::Impl::fit(size_t n,
                                              const std::function<cv::Mat(size_t)>& load,
                                              const Params& params, const Callbacks& cb) {
  validate(params);
  if (n == 0) throw_bad_input("(training set)", "no images to fit on");
  const CallThreads threads(params.threads);
  auto impl = std::make_unique<Impl>();
  impl->params = params;
  Impl& m = *impl;

  const BackboneSpec spec = resolve_backbone(params);
  m.layers = spec.layers;
  m.normalization = normalization_from_string(spec.normalization);
  m.image_size = spec.image_size;
  if (params.crop > m.image_size)
    throw_usage("crop (" + std::to_string(params.crop) + ") must not exceed image_size (" +
                std::to_string(m.image_size) + ")");
  if (params.resize != Resize::squash && params.crop > 0)
    throw_usage(std::string("resize ") + to_string(params.resize) +
                " keeps the whole image: it cannot be combined with crop");
  int largest = 0;
  if (params.resize == Resize::fixed || params.intensity == Intensity::automatic) {
    // What the rules need from the training images: the largest side (fixed: it fills S) and
    // the spread of mean brightness (automatic intensity). A decode each, a few per cent of
    // the fit; unreadable images are reported by the extraction below.
    std::vector<double> brightness;
    for (size_t i = 0; i < n; ++i) {
      try {
        const cv::Mat img = load(i);
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
  const std::vector<bool> held =
      choose_held(n, params.holdout_fraction, params.seed ^ 0x9e3779b97f4a7c15ULL);
  const Scan s = m.scan(n, load, held, cb);
  const MatrixView features = s.store->features();

  // Memory bank: greedy coreset over every training patch.
  const CoresetParams cp{
      params.coreset_ratio, params.coreset_min, params.coreset_dim, params.seed, 10,
      threads.count()};
  std::vector<int64_t> picks;
  CoresetStats stats;
  {
    StageTimer t(cb, "coreset", features.rows);
    const auto progress = [&](int64_t done, int64_t total) {
      if (cb.progress) cb.progress("coreset", done, total);
    };
    picks = s.store->streamed()
                ? greedy_coreset_projected(s.store->projected(), cp, progress, &stats)
                : greedy_coreset(features, cp, progress, &stats);
  }
  m.radius = stats.radius;
  m.patches = features.rows;
  m.bank = gather_rows(*s.store, picks);

  // Calibration from the held-out images, scored as if unseen.
  std::vector<int64_t> sub_rows;
  for (int64_t r : picks)
    if (!s.row_held[static_cast<size_t>(r / s.rows_per_image)]) sub_rows.push_back(r);
  if (s.any_held() && !sub_rows.empty())
    m.score_held(NearestNeighbors(gather_rows(*s.store, sub_rows), threads.count()), s, cb);
  m.calibrate(cb);
  m.history.push_back(json{{"action", "fit"},
                           {"time", utc_now()},
                           {"images", s.images()},
                           {"patches", features.rows},
                           {"rows", m.bank.dim(0)}});
  m.nn = std::make_unique<NearestNeighbors>(m.bank, 0);
  return impl;
}

Model::Impl::Scan Model::Impl::scan(size_t n, const std::function<cv::Mat(size_t)>& load,
                                    const std::vector<bool>& held, const Callbacks& cb) {
  Scan s;
  const size_t bs = static_cast<size_t>(params.batch_size);
  for (size_t start = 0; start < n; start += bs) {
    std::vector<size_t> ok;
    std::vector<cv::Size> sizes;
    const std::vector<Tensor> maps = extract(
        std::min(n, start + bs) - start, [&](size_t i) { return load(start + i); }, ok, sizes, cb);
    if (!ok.empty()) {
      const EmbeddingLayout layout = embedding_layout(maps, embedding_params());
      if (!s.store) {
        check_dim(layout.dim);
        if (grid_h == 0) {
          grid_h = layout.grid_h;
          grid_w = layout.grid_w;
        }
        PATCHCORE_ASSERT(layout.grid_h == grid_h && layout.grid_w == grid_w);
        s.rows_per_image = static_cast<int64_t>(grid_h) * grid_w;
        s.store = make_store(layout.dim, s.rows_per_image, n, cb);
      }
      PATCHCORE_ASSERT(layout.dim == s.store->dim() &&
                       layout.rows == s.rows_per_image * std::ssize(ok));
      {
        StageTimer t(cb, "embedding", std::ssize(ok));
        embed_into(maps, embedding_params(), s.store->next(layout.rows));
      }
      s.store->commit(layout.rows);
      for (size_t j : ok) s.row_held.push_back(held[start + j] ? 1 : 0);
    }
    if (cb.progress) cb.progress("features", static_cast<int64_t>(std::min(n, start + bs)), n);
  }
  if (!s.store)
    throw_bad_input("(training set)", "none of the " + std::to_string(n) + " images could be read");
  s.store->finish();
  return s;
}

// In memory when the features fit in params.max_memory (with the coreset's projection of them
// and a copy, and its 16 subspace coordinates and slack per row), else streamed to disk when
// the projected rows, the batch and the bank fit; else an error before any more work.
std::unique_ptr<FeatureStore> Model::Impl::make_store(int64_t dim, int64_t rows_per_image, size_t n,
                                                      const Callbacks& cb) const {
  const int64_t rows = rows_per_image * static_cast<int64_t>(n);
  const double pd = static_cast<double>(std::min<int64_t>(dim, params.coreset_dim));
  const double r = static_cast<double>(rows);
  const double features = r * static_cast<double>(dim) * 4.0;
  const double in_memory = features + r * (pd * 2.0 + 17.0) * 4.0;
  const double available = available_bytes();
  const double limit =
      params.max_memory > 0 ? static_cast<double>(params.max_memory) : kMemoryFraction * available;
  if (limit <= 0 || in_memory <= limit) return std::make_unique<FeatureStore>(rows, dim);
  const double picks = std::clamp(
      std::max(std::floor(params.coreset_ratio * r), static_cast<double>(params.coreset_min)), 1.0,
      r);
  // A batch's rows and the last incomplete chunk of 1,024 carried before them.
  const double batch = (static_cast<double>(params.batch_size * rows_per_image) + 1024.0) *
                       static_cast<double>(dim) * 4.0;
  const double streamed = r * (pd + 18.0) * 4.0 + batch + 2.0 * picks * dim * 4.0;
  char msg[700];
  if (streamed > limit) {
    std::snprintf(msg, sizeof msg,
                  "the %lld training patches need about %.2f GB even with their features on "
                  "disk (%.2f GB in memory) but %.2f GB may be used (%s); use a smaller "
                  "image_size, fewer images per process (a fit in shards, then a merge), a "
                  "smaller coreset_ratio, or a larger max_memory",
                  static_cast<long long>(rows), streamed / 1e9, in_memory / 1e9, limit / 1e9,
                  params.max_memory > 0 ? "max_memory" : "80 % of the available memory");
    throw_bad_input("(training set)", msg);
  }
  const fs::path folder = params.scratch_folder.empty() ? fs::path(".") : params.scratch_folder;
  std::snprintf(msg, sizeof msg,
                "the patch features (%.2f GB) exceed the memory limit (%.2f GB): streaming them "
                "to a file in %s, about %.2f GB in memory",
                features / 1e9, limit / 1e9, folder.string().c_str(), streamed / 1e9);
  log(cb, LogLevel::info, msg);
  return std::make_unique<FeatureStore>(rows, dim, folder, params.coreset_dim, params.seed,
                                        omp_get_max_threads());  // the call's count
}

void Model::Impl::check_dim(int64_t dim) const {
  if (bank.numel() > 0 && dim != bank.dim(1))
    throw_bad_input(source_file.empty() ? params.backbone : source_file,
                    "the backbone gives " + std::to_string(dim) +
                        "-dimensional patches but the memory bank holds " +
                        std::to_string(bank.dim(1)) +
                        ": the model was fitted with a different backbone or settings");
}

// Scores the held-out images of a scan against `index` (bank rows from the other images) into
// hold_scores and hold_pixels.
void Model::Impl::score_held(const NearestNeighbors& index, const Scan& s, const Callbacks& cb) {
  StageTimer timer(cb, "holdout",
                   std::count(s.row_held.begin(), s.row_held.end(), static_cast<uint8_t>(1)));
  std::vector<int64_t> rows(static_cast<size_t>(s.rows_per_image));
  std::vector<float> patches(static_cast<size_t>(s.rows_per_image * s.store->dim()));
  for (size_t img = 0; img < s.row_held.size(); ++img) {
    if (!s.row_held[img]) continue;
    std::iota(rows.begin(), rows.end(), static_cast<int64_t>(img) * s.rows_per_image);
    s.store->read_rows(rows, patches.data());
    Prediction p = score(index, patches.data());
    hold_scores.push_back(static_cast<float>(p.score));
    // Every 4th pixel in each direction is plenty for a quantile and keeps memory flat.
    for (int y = 0; y < p.map.height; y += 4)
      for (int x = 0; x < p.map.width; x += 4)
        hold_pixels.push_back(p.map.values[static_cast<size_t>(y) * p.map.width + x]);
  }
}

void Model::Impl::calibrate(const Callbacks& cb) {
  if (!hold_scores.empty()) {
    calibration = calibrate_from_normal(hold_scores, hold_pixels);
    log(cb, LogLevel::info,
        "threshold " + std::to_string(calibration.image_threshold) + " from " +
            std::to_string(hold_scores.size()) + " held-out normal images");
    return;
  }
  // Nothing held out: the best guess is the bank's own spread (each bank row's distance to its
  // nearest other row), which a user should replace by evaluating on labelled images.
  NearestNeighbors self(bank, omp_get_max_threads());  // the call's count
  const int64_t rows = bank.dim(0);
  std::vector<float> d(static_cast<size_t>(rows) * 2);
  std::vector<int64_t> idx(static_cast<size_t>(rows) * 2);
  const int kk = rows >= 2 ? 2 : 1;
  self.search(bank.ptr(), rows, kk, d.data(), idx.data());
  std::vector<float> nearest;
  for (int64_t r = 0; r < rows; ++r) {
    const float sq = d[static_cast<size_t>(r) * kk + kk - 1];
    nearest.push_back(params.squared_l2 ? sq : std::sqrt(std::max(sq, 0.0f)));
  }
  calibration = calibrate_from_normal(nearest, nearest);
  calibration.source = "guess";
  log(cb, LogLevel::warning,
      "too few training images to hold any out: the threshold is a guess; set one by "
      "evaluating on labelled images or by hand");
}

std::vector<Prediction> Model::Impl::predict(size_t count,
                                             const std::function<cv::Mat(size_t)>& load,
                                             const std::function<std::string(size_t)>& name,
                                             const Callbacks& cb) const {
  CallThreads threads(params.threads);
  std::vector<Prediction> out;
  const size_t bs = static_cast<size_t>(params.batch_size);
  for (size_t start = 0; start < count; start += bs) {
    if (start > 0) threads.update();  // calls that started or ended meanwhile change the share
    const size_t n = std::min(count, start + bs) - start;
    std::vector<size_t> ok;
    std::vector<cv::Size> sizes;
    Embedding e = embed_batch(
        n, [&](size_t i) { return load(start + i); }, ok, sizes, cb);
    const int64_t rows = static_cast<int64_t>(e.grid_h) * e.grid_w;
    for (size_t j = 0; j < ok.size(); ++j) {
      Prediction p = score(*nn, e.patches.row(static_cast<int64_t>(j) * rows), cb);
      p.path = name(start + ok[j]);
      p.image_height = sizes[j].height;
      p.image_width = sizes[j].width;
      finish(p, calibration.image_threshold);
      out.push_back(std::move(p));
    }
    if (cb.progress)
      cb.progress("predict", static_cast<int64_t>(start + n), static_cast<int64_t>(count));
  }
  return out;
}

std::vector<Prediction> Model::predict(const std::vector<fs::path>& images,
                                       const Callbacks& cb) const {
  return impl_->predict(
      images.size(), [&](size_t i) { return load_rgb(images[i]); },
      [&](size_t i) { return images[i].string(); }, cb);
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

std::vector<Prediction> Model::predict(const std::vector<ImageView>& images,
                                       const Callbacks& cb) const {
  for (const ImageView& v : images) check_view(v);
  return impl_->predict(
      images.size(), [&](size_t i) { return view_rgb(images[i]); },
      [&](size_t i) { return images[i].name; }, cb);
}

Prediction Model::predict(const ImageView& image) const {
  std::vector<Prediction> p = predict(std::vector<ImageView>{image});
  PATCHCORE_ASSERT(p.size() == 1);  // a valid view always decodes
  return std::move(p.front());
}

AnomalyMap Model::image_map(const Prediction& p) const {
  if (p.map.height != map_size() || p.map.width != map_size() ||
      p.map.values.size() != static_cast<size_t>(p.map.height) * p.map.width)
    throw_usage("image_map: the prediction's map is not this model's (" +
                std::to_string(p.map.height) + " x " + std::to_string(p.map.width) +
                ", expected " + std::to_string(map_size()) + " square)");
  if (p.image_height < 1 || p.image_width < 1)
    throw_usage("image_map: the prediction has no image size");
  const cv::Mat m = map_to_image(p.map, cv::Size(p.image_width, p.image_height),
                                 impl_->preprocess());
  AnomalyMap out;
  out.height = m.rows;
  out.width = m.cols;
  out.values.assign(m.ptr<float>(), m.ptr<float>() + m.total());
  return out;
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
  if (m.radius >= 0)
    c.metadata["coverage"] = json{{"radius", m.radius}, {"patches", m.patches}}.dump();
  if (!m.history.empty()) c.metadata["history"] = m.history.dump();
  if (!m.shard.is_null()) c.metadata["shard"] = m.shard.dump();
  for (const auto& [key, values] :
       {std::pair{"holdout_scores", &m.hold_scores}, std::pair{"holdout_pixels", &m.hold_pixels}}) {
    if (values->empty()) continue;
    Tensor t({std::ssize(*values)});
    t.data = *values;
    c.f32[key] = std::move(t);
  }
  write_model_file(file, c);
}

// The optional entries update and merge need (absent in older files).
void Model::Impl::load_growth(ModelFileContents& c, const fs::path& file) {
  Impl& m = *this;
  if (c.metadata.count("coverage")) {
    const json g = json::parse(c.metadata.at("coverage"));
    m.radius = g.at("radius").get<double>();
    m.patches = g.at("patches").get<int64_t>();
    if (!std::isfinite(m.radius) || m.radius < 0 || m.patches < 0)
      throw_bad_input(file.string(), "invalid coverage entry");
  }
  if (c.metadata.count("history")) {
    m.history = json::parse(c.metadata.at("history"));
    if (!m.history.is_array()) throw_bad_input(file.string(), "the history is not a list");
  }
  if (c.metadata.count("shard")) m.shard = json::parse(c.metadata.at("shard"));
  for (const auto& [key, values] :
       {std::pair{"holdout_scores", &m.hold_scores}, std::pair{"holdout_pixels", &m.hold_pixels}}) {
    if (!c.f32.count(key)) continue;
    *values = std::move(c.f32.at(key).data);
    for (float v : *values)
      if (!std::isfinite(v)) throw_bad_input(file.string(), std::string(key) + " not finite");
  }
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
  try {
    m.load_growth(c, file);
  } catch (const json::exception& e) {
    throw_bad_input(file.string(), std::string("invalid growth entries: ") + e.what());
  }
  m.params.threads = 0;
  const CallThreads threads(0);
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
    const CallThreads threads(0);
    const Impl::Lease net(m);
    try {
      features = net->forward(batch);
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
  if (m.radius >= 0) j["coverage"] = {{"radius", m.radius}, {"patches", m.patches}};
  j["holdout_images"] = m.hold_scores.size();
  if (!m.history.empty()) j["history"] = m.history;
  if (!m.shard.is_null()) j["shard"] = m.shard;
  return j.dump(2);
}

// ---- Models that grow: update, shards, merge ----

std::unique_ptr<Model::Impl> Model::Impl::same_settings() const {
  auto out = std::make_unique<Impl>();
  out->params = params;
  out->calibration = calibration;
  out->backbone_identity = backbone_identity;
  out->layers = layers;
  out->normalization = normalization;
  out->image_size = image_size;
  out->onnx = onnx;
  out->grid_h = grid_h;
  out->grid_w = grid_w;
  out->created_by = created_by;
  return out;
}

int64_t Model::Impl::update(size_t n, const std::function<cv::Mat(size_t)>& load,
                            const UpdateParams& up, const Callbacks& cb) {
  if (up.radius < 0 || !std::isfinite(up.radius))
    throw_usage("radius must be a distance >= 0 (0: the model's own)");
  if (n == 0) throw_bad_input("(new images)", "no images to add");
  double r = up.radius > 0 ? up.radius : radius;
  if (r < 0) {
    if (up.max_rows < 0)
      throw_bad_input(name(),
                      "the model stores no coverage radius (written before `patchcore update` "
                      "existed): give a radius (an L2 distance in the coreset's projected "
                      "space) or max_rows, or fit the model again");
    r = 0;
    log(cb, LogLevel::warning,
        "the model stores no coverage radius: adding the " + std::to_string(up.max_rows) +
            " new patches farthest from the bank");
  }
  const CallThreads threads(params.threads);
  const int64_t updates = std::count_if(history.begin(), history.end(), [](const json& h) {
    return h.value("action", "") == "update";
  });
  // Each update holds out its own images, by a seed of its own.
  const std::vector<bool> held =
      choose_held(n, params.holdout_fraction,
                  params.seed ^ (0x75706461746500ULL + static_cast<uint64_t>(updates)));
  const Scan s = scan(n, load, held, cb);
  const MatrixView features = s.store->features();

  // The greedy coreset continued: distances of the new patches to the bank, in the projected
  // space fit searched in, then farthest-first picks.
  std::vector<int64_t> picks;
  {
    StageTimer t(cb, "coreset", features.rows);
    const Tensor bank_rows = coreset_search_rows({bank.ptr(), bank.dim(0), bank.dim(1)},
                                                 params.coreset_dim, params.seed, threads.count());
    // A streamed store projected its rows as they arrived.
    const Tensor new_rows =
        s.store->streamed()
            ? coreset_search_rows(s.store->projected(), params.coreset_dim, params.seed, 1)
            : coreset_search_rows(features, params.coreset_dim, params.seed, threads.count());
    std::vector<float> sq(static_cast<size_t>(features.rows));
    std::vector<int64_t> nearest(static_cast<size_t>(features.rows));
    NearestNeighbors(bank_rows, threads.count())
        .search(new_rows.ptr(), features.rows, 1, sq.data(), nearest.data());
    picks = coreset_extend({new_rows.ptr(), new_rows.dim(0), new_rows.dim(1)}, sq,
                           static_cast<float>(r), up.max_rows, threads.count());
  }

  // Held-out new images against the old bank and the other new images' picks.
  const size_t old_scores = hold_scores.size();
  if (s.any_held()) {
    std::vector<int64_t> sub_rows;
    for (int64_t row : picks)
      if (!s.row_held[static_cast<size_t>(row / s.rows_per_image)]) sub_rows.push_back(row);
    score_held(
        NearestNeighbors(stack_rows(bank, gather_rows(*s.store, sub_rows)), threads.count()), s,
        cb);
  }
  bank = stack_rows(bank, gather_rows(*s.store, picks));
  if (old_scores == 0 && radius < 0)
    log(cb, LogLevel::warning,
        "the model stores no held-out scores (an older file): the threshold comes from the new "
        "images alone");
  if (calibration.source == "f1" || calibration.source == "user")
    log(cb, LogLevel::warning,
        "the threshold set by eval or by hand (" + std::to_string(calibration.image_threshold) +
            ") is replaced by one from the held-out images; evaluate on labelled images again "
            "to restore an F1-optimal one");
  if (!hold_scores.empty()) calibrate(cb);
  patches += features.rows;
  if (radius < 0 && up.radius > 0) radius = up.radius;  // the user's radius, for later updates
  history.push_back(json{{"action", "update"},
                         {"time", utc_now()},
                         {"images", s.images()},
                         {"patches", features.rows},
                         {"rows_added", std::ssize(picks)},
                         {"rows", bank.dim(0)},
                         {"radius", r}});
  log(cb, LogLevel::info,
      "added " + std::to_string(picks.size()) + " memory bank rows from " +
          std::to_string(features.rows) + " new patches (now " + std::to_string(bank.dim(0)) + ")");
  nn = std::make_unique<NearestNeighbors>(bank, 0);
  return std::ssize(picks);
}

int64_t Model::update(const std::vector<fs::path>& images, const UpdateParams& params,
                      const Callbacks& cb) {
  return impl_->update(
      images.size(), [&](size_t i) { return load_rgb(images[i]); }, params, cb);
}

int64_t Model::update(const std::vector<ImageView>& images, const UpdateParams& params,
                      const Callbacks& cb) {
  for (const ImageView& v : images) check_view(v);
  return impl_->update(
      images.size(), [&](size_t i) { return view_rgb(images[i]); }, params, cb);
}

Model Model::fit_shard(const std::vector<fs::path>& images, const Params& params, Shard shard,
                       const Callbacks& cb) {
  if (shard.count < 1 || shard.index < 0 || shard.index >= shard.count)
    throw_usage("shard I/K needs 0 <= I < K, got " + std::to_string(shard.index) + "/" +
                std::to_string(shard.count));
  std::vector<fs::path> mine;
  for (size_t i = static_cast<size_t>(shard.index); i < images.size();
       i += static_cast<size_t>(shard.count))
    mine.push_back(images[i]);
  if (mine.empty())
    throw_bad_input("(training set)", "shard " + std::to_string(shard.index) + "/" +
                                          std::to_string(shard.count) + " holds no image (" +
                                          std::to_string(images.size()) + " in the set)");
  Params p = params;
  p.coreset_ratio = std::min(1.0, 2.0 * params.coreset_ratio);
  p.coreset_min = (2 * params.coreset_min + shard.count - 1) / shard.count;
  Model m = fit(mine, p, cb);
  m.impl_->shard = json{{"index", shard.index},
                        {"count", shard.count},
                        {"coreset_ratio", params.coreset_ratio},
                        {"coreset_min", params.coreset_min}};
  return m;
}

Model Model::merge(const std::vector<const Model*>& parts, const Callbacks& cb) {
  if (parts.empty()) throw_usage("merge: no parts given");
  const Impl& first = *parts.front()->impl_;
  // The settings a fit on every part's images would have had.
  Params target = first.params;
  if (!first.shard.is_null()) {
    target.coreset_ratio = first.shard.at("coreset_ratio").get<double>();
    target.coreset_min = first.shard.at("coreset_min").get<int64_t>();
  }
  auto impl = first.same_settings();
  Impl& m = *impl;
  m.params = target;
  const auto settings = [](const Impl& p) {
    json j = params_to_json(p.params);
    j.erase("coreset_ratio");
    j.erase("coreset_min");
    j.erase("holdout_fraction");
    j.erase("batch_size");
    return j;
  };
  std::vector<Tensor> banks;
  int64_t rows = 0;
  for (const Model* part : parts) {
    const Impl& p = *part->impl_;
    if (settings(p) != settings(first) || p.backbone_json() != first.backbone_json() ||
        p.grid_h != first.grid_h || p.grid_w != first.grid_w)
      throw_bad_input(p.name(), "fitted with other settings or another backbone than " +
                                    first.name() + ": parts must come from one fit command");
    if (p.radius < 0 || p.patches <= 0)
      throw_bad_input(p.name(),
                      "stores no patch count (written before `patchcore merge` existed): fit it "
                      "again");
    if (p.hold_scores.empty() != first.hold_scores.empty())
      throw_bad_input(p.name(),
                      "has held-out scores where " + first.name() + " has none, or the reverse");
    m.patches += p.patches;
    m.hold_scores.insert(m.hold_scores.end(), p.hold_scores.begin(), p.hold_scores.end());
    m.hold_pixels.insert(m.hold_pixels.end(), p.hold_pixels.begin(), p.hold_pixels.end());
    rows += p.bank.dim(0);
  }
  Tensor all({rows, first.bank.dim(1)});
  int64_t at = 0;
  for (const Model* part : parts) {
    const Tensor& b = part->impl_->bank;
    std::copy(b.data.begin(), b.data.end(), all.data.begin() + at);
    at += b.numel();
  }
  // As many picks as a fit on every image would make, chosen from the union.
  const double wanted = std::max(std::floor(target.coreset_ratio * static_cast<double>(m.patches)),
                                 static_cast<double>(target.coreset_min));
  const CoresetParams cp{1e-300,
                         static_cast<int64_t>(std::min(wanted, static_cast<double>(rows))),
                         target.coreset_dim,
                         target.seed,
                         10,
                         target.threads};
  const CallThreads threads(target.threads);
  std::vector<int64_t> picks;
  CoresetStats stats;
  {
    StageTimer t(cb, "coreset", rows);
    picks = greedy_coreset(
        MatrixView{all.ptr(), rows, all.dim(1)}, cp,
        [&](int64_t done, int64_t total) {
          if (cb.progress) cb.progress("coreset", done, total);
        },
        &stats);
  }
  m.bank = Tensor({std::ssize(picks), all.dim(1)});
  for (size_t i = 0; i < picks.size(); ++i)
    std::copy_n(all.row(picks[i]), all.dim(1), m.bank.row(static_cast<int64_t>(i)));
  m.radius = stats.radius;
  int64_t images = 0;
  for (const Model* part : parts)
    for (const json& h : part->impl_->history) images += h.value("images", int64_t{0});
  m.calibrate(cb);
  m.history.push_back(json{{"action", "merge"},
                           {"time", utc_now()},
                           {"parts", parts.size()},
                           {"images", images},
                           {"patches", m.patches},
                           {"rows", m.bank.dim(0)}});
  m.nn = std::make_unique<NearestNeighbors>(m.bank, 0);
  return Model(std::move(impl));
}

}  // namespace patchcore
