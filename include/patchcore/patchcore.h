// patchcore: PatchCore visual anomaly detection (Roth et al., CVPR 2022) in C++.
//
// Fit on normal images only, then give every new image an anomaly score and a pixel heatmap.
//
//   patchcore::Params params;                       // defaults: see the fields below
//   auto model = patchcore::Model::fit(images, params, callbacks);
//   model.save("part.patchcore");
//   auto loaded = patchcore::Model::load("part.patchcore");
//   patchcore::Prediction p = loaded.predict("new.png");
//
// The library never prints: log lines and progress go to the callbacks. User errors (bad file,
// bad option) throw patchcore::Error with ErrorKind::bad_input or ::usage and a message that
// names the file and the problem; broken invariants throw ErrorKind::internal.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace patchcore {

/// The values double as the CLI's exit codes.
enum class ErrorKind { internal = 1, usage = 2, bad_input = 3 };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message);
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

enum class LogLevel { debug, info, warning, error };

struct Callbacks {
  /// A line for the user (a skipped image, a chosen default).
  std::function<void(LogLevel, const std::string&)> log;
  /// A long stage ("features", "coreset", "scoring") advanced to done of total.
  std::function<void(const std::string& stage, int64_t done, int64_t total)> progress;
  /// Wall time spent in a pipeline stage ("decode", "backbone", "embedding", "coreset", "knn",
  /// "map") on `items` images (or rows for the coreset), for benchmarks.
  std::function<void(const std::string& stage, double seconds, int64_t items)> timing;
};

/// How the backbone's layers become one patch feature vector.
enum class EmbeddingMode {
  paper,   ///< 3x3 neighbourhoods, adaptive average pooling to pretrain_dim, then target_dim
  concat,  ///< anomalib: 3x3 average, bilinear alignment, channel concatenation (no pooling)
};

enum class Upsample { bilinear, nearest };

/// Intensities before the network.
enum class Intensity {
  keep,         ///< as they are (the paper)
  standardize,  ///< each image's channels brought to ImageNet's mean and spread (per image)
  /// fit decides from the normal images: standardize when their mean brightness varies by more
  /// than kIntensityVariation (coefficient of variation), else keep. A fitted model holds the
  /// decision, never `automatic`.
  automatic,
};
/// Brightness spread between training images above which `automatic` standardises: exposure
/// that varies by a tenth is a nuisance the model should not learn (docs/accuracy.md: 0.31 on
/// magnetic_tile and hei_med, 0.003 on the synthetic demo).
inline constexpr double kIntensityVariation = 0.1;

/// How an image becomes the S x S network input.
enum class Resize {
  squash,  ///< stretched to S x S (the paper, anomalib): shapes change with the aspect ratio
  pad,     ///< longer side to S, aspect kept, the rest padded; scored and shown without the pad
  /// as pad, but one scale factor for every image (the largest training image fills S), so
  /// that a defect of a given size in pixels looks the same in every image, as when images
  /// are crops from one camera; a test image too large for S is scaled down to fit
  fixed,
};

/// What runs the backbone. A choice of this run, not stored in a model: the engines compute
/// the same features to float rounding (1e-5 relative) in fp32.
enum class BackboneEngine {
  automatic,  ///< dnnl when it implements every operator, else opencv
  dnnl,       ///< oneDNN primitives, NHWC activations, fp32 or bf16 (the faster)
  opencv,     ///< OpenCV DNN
};

/// The backbone's arithmetic. A choice of this run, not stored in a model. bf16 rounds weights
/// and activations to bf16 (sums in fp32): about twice fp32's speed where the CPU has bf16
/// instructions, features within bf16 rounding (metrics: docs/benchmarks.md).
enum class Precision {
  automatic,  ///< bf16 where the dnnl engine has bf16 kernels for this CPU, else fp32
  fp32,
  bf16,  ///< dnnl engine only; without bf16 instructions it runs fp32, with a log line
};

struct Params {
  /// "paper", "anomalib" or "" (this project's defaults); recorded for `info`. Applying a
  /// preset's values is the caller's job (the CLI's --preset).
  std::string preset;
  /// Built-in name ("inception_v3", "mobilenet_v2") or the path of an ONNX file.
  std::string backbone = "inception_v3";
  /// Layers to take features from, shallow to deep; empty: the backbone's defaults.
  std::vector<std::string> layers;
  /// Input normalisation: "imagenet", "m11" or "unit"; empty: the built-in backbone's own.
  /// Required for an ONNX file.
  std::string normalization;
  /// Input side S: images are resized to S x S. 0: the backbone's default.
  int image_size = 0;
  Resize resize = Resize::squash;
  double resize_scale = 0;  ///< Resize::fixed: the factor fit found (S / largest side); else 0
  Intensity intensity = Intensity::automatic;
  /// Centre crop C after resizing the shorter side to S (paper preset); 0: no crop.
  int crop = 0;

  /// concat keeps every channel of every layer; the paper's pooling to 1024 dimensions was
  /// sized for WideResNet-50 (512 + 1024 channels) and averages across channels of other
  /// backbones: measured on magnetic_tile and hei_med in docs/results.md.
  EmbeddingMode embedding = EmbeddingMode::concat;
  int patch_size = 3;       ///< local neighbourhood p
  int pretrain_dim = 1024;  ///< per-layer pooled dimension (paper embedding)
  int target_dim = 1024;    ///< final patch dimension (paper mode)

  double coreset_ratio = 0.01;  ///< fraction of patches kept in the memory bank; >= 1 keeps all
  /// ... but at least this many patches (all of them when there are fewer). Small training sets
  /// (tens of images) otherwise get banks of a few hundred patches that miss normal variation;
  /// 10,000 rows cost what 1 % of a thousand images costs at search time (docs/accuracy.md).
  int64_t coreset_min = 10000;
  int coreset_dim = 128;  ///< random projection used while selecting the coreset
  uint64_t seed = 0;

  int k = 1;                ///< nearest neighbours averaged per test patch
  bool squared_l2 = false;  ///< patch score as squared L2 (the authors' FAISS code) or L2
  bool reweight = false;    ///< Eq. 7 re-weighting of the image score
  int reweight_b = 9;       ///< neighbourhood size b of Eq. 7
  Upsample upsample = Upsample::bilinear;
  double blur_sigma = 4.0;       ///< Gaussian blur of the anomaly map, in pixels of the S x S map
  bool blur_reflect101 = false;  ///< blur border BORDER_REFLECT_101 (anomalib) or REFLECT

  /// Fraction of normal training images held out (from their own bank points) to set the
  /// threshold and the normalisation when no abnormal images exist.
  double holdout_fraction = 0.1;

  /// 0: all cores. The work runs on OpenMP threads (OpenCV's for image operations); run the
  /// program with OMP_WAIT_POLICY=passive when other processes share the cores (the CLI sets
  /// it for itself): spinning idle threads slowed two concurrent runs several-fold.
  int threads = 0;
  /// Images per backbone call (decoded and pre-processed together; the dnnl engine then runs
  /// them one after another, each layer on all threads).
  int batch_size = 8;
  BackboneEngine engine = BackboneEngine::automatic;  ///< not stored in the model file
  Precision precision = Precision::automatic;         ///< not stored in the model file
};

/// A float image, row-major.
struct AnomalyMap {
  int height = 0;
  int width = 0;
  std::vector<float> values;
};

struct Prediction {
  std::filesystem::path path;
  double score = 0;             ///< raw image score (unbounded, model-specific scale)
  double normalized_score = 0;  ///< in [0, 1]; the threshold maps to 0.5
  bool anomalous = false;       ///< score >= threshold
  AnomalyMap map;               ///< raw patch scores upsampled and blurred, S x S
  int image_height = 0;         ///< of the original image, to map the heatmap back onto it
  int image_width = 0;
};

/// What a model stores for turning raw scores into decisions.
struct Calibration {
  double image_threshold = 0;
  double pixel_threshold = 0;
  double min_score = 0;  ///< normalisation: min_score -> 0, max_score -> 1 (clipped)
  double max_score = 1;
  std::string source;  ///< "holdout" or "f1" (set by eval) or "user"
};

/// Normalised score per Calibration: threshold -> 0.5, clipped to [0, 1].
double normalize_score(double score, double threshold, const Calibration& c);

class Model {
 public:
  /// Fits on normal images. Unreadable images are reported through callbacks.log and skipped;
  /// throws Error(bad_input) when none is left.
  static Model fit(const std::vector<std::filesystem::path>& images, const Params& params,
                   const Callbacks& callbacks = {});
  /// Throws Error(bad_input) naming the file on a missing, truncated, foreign or newer file.
  static Model load(const std::filesystem::path& file, const Callbacks& callbacks = {});
  /// Writes atomically: a temporary file in the same folder, then a rename.
  void save(const std::filesystem::path& file) const;

  /// Throws Error(bad_input) naming the image when it cannot be read.
  Prediction predict(const std::filesystem::path& image) const;
  /// Batched; an unreadable image is reported through callbacks.log and left out of the result.
  std::vector<Prediction> predict(const std::vector<std::filesystem::path>& images,
                                  const Callbacks& callbacks = {}) const;

  const Params& params() const;
  const Calibration& calibration() const;
  void set_calibration(const Calibration& c);
  /// Everything `patchcore info` shows, as a JSON text.
  std::string info_json() const;
  /// Side of the square the anomaly maps have (the network input size or the crop).
  int map_size() const;
  /// Floating-point operations of the backbone per image (multiply-adds count two), for
  /// benchmarks; 0 when unknown.
  double backbone_flops_per_image() const;
  /// Bank rows whose distance was computed exactly per patch, averaged over the predictions so
  /// far; 0 when the search is brute force (small banks) or before any prediction. For
  /// benchmarks: the rest of the bank was ruled out by a lower bound.
  double knn_exact_per_patch() const;
  /// Whether the bounded search still takes its coarse bound first (it turns that off where
  /// too many bank rows pass it); false for brute force. For benchmarks.
  bool knn_coarse_stage() const;
  /// Sets the thread count for later predictions (0: all cores).
  void set_threads(int threads);
  /// Chooses what runs the backbone for later predictions (a loaded model starts automatic).
  void set_engine(BackboneEngine engine);
  /// "dnnl" or "opencv": the engine that runs (or will run) the backbone.
  std::string backbone_engine() const;
  /// Chooses the backbone's arithmetic for later predictions (a loaded model starts automatic).
  void set_precision(Precision precision);
  /// "fp32" or "bf16": what the backbone runs (or will run) in.
  std::string backbone_precision() const;

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace patchcore
