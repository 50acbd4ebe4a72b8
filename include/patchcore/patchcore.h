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
//
// Threads. A const Model may be used from many threads at once (predict, image_map, info_json,
// save, ...); the non-const setters (set_calibration, set_threads, set_engine) must not run
// while another thread uses the same model. Every call runs its parallel work on OpenMP threads
// whose count is set for that call on the calling thread and restored after it (Params::threads,
// 0: all cores, shared among the library calls in flight); the library never changes
// process-wide settings, except set_opencv_threads() when asked. Concurrent predictions on one
// model each run the backbone on one of their own (built when first needed, up to one per core,
// each holding the graph's weights; beyond that calls wait for one): a server gets the most out
// of the cores by batching requests into one predict call rather than by many small calls.
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

/// Throws Error(ErrorKind::bad_input) with "<path>: <what>" (path: a file, or the name of an
/// input such as "request input 2").
[[noreturn]] void throw_bad_input(const std::string& path, const std::string& what);
/// Throws Error(ErrorKind::usage).
[[noreturn]] void throw_usage(const std::string& what);

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

  /// OpenMP threads of each call, set on the calling thread for the call and restored after it.
  /// 0: all cores, shared among the library's calls in flight (any model, any thread): a call
  /// takes cores / calls running at its start (and at each batch), at least one, so that
  /// concurrent callers that each ask for all cores do not start full teams on the same cores.
  /// A call made inside an OpenMP parallel region runs on its own thread (nested regions are
  /// inactive by default). Image operations and the OpenCV engine run on OpenCV's pool, which
  /// is process-wide (set_opencv_threads). Run the program with OMP_WAIT_POLICY=passive when
  /// other work shares the cores (the CLI sets it for itself): spinning idle threads slowed two
  /// concurrent runs several-fold.
  int threads = 0;
  /// Images per backbone call (decoded and pre-processed together; the dnnl engine then runs
  /// them one after another, each layer on all threads).
  int batch_size = 8;
  BackboneEngine engine = BackboneEngine::automatic;  ///< not stored in the model file
  /// fp32 by default: bf16 kept pixel AUROC and AUPRO within 0.005 of fp32 but moved hei_med's
  /// image AUROC by up to 0.043 (docs/benchmarks.md), beyond the bound a default must keep.
  Precision precision = Precision::fp32;  ///< not stored in the model file

  /// Bytes fit may hold for the patch features before the coreset is chosen; 0: 80 % of the
  /// memory the kernel reports available (MemAvailable). Beyond it, fit streams the features to
  /// a nameless file in scratch_folder, keeps only the coreset's projected rows in memory and
  /// reads the chosen rows back (the same picks); when even those would not fit it throws
  /// Error(bad_input) before any extraction. A choice of this run, not stored in the model.
  int64_t max_memory = 0;
  /// Where streamed features go (the CLI: the output model's folder); empty: the current one.
  std::filesystem::path scratch_folder;
};

/// Options of Model::update().
struct UpdateParams {
  /// Add at most this many memory bank rows; < 0: no limit.
  int64_t max_rows = -1;
  /// Coverage radius to continue from, in the coreset's projected space; 0: the radius the model
  /// stored at fit. Models written before the radius was stored need this (or max_rows alone,
  /// which then adds the farthest new patches up to that count).
  double radius = 0;
};

/// Which part of a training set a partial model covers: images index, index + count, ...
struct Shard {
  int index = 0;
  int count = 1;
};

// ---------------------------------------------------------------------------------------------
// Parameters as text, presets, and the backbone's defaults

/// The enums' names as model files, `info` and the CLI write them. The *_from_string functions
/// throw Error(usage) naming the parameter and the choices on any other name.
const char* to_string(EmbeddingMode m);  ///< "paper", "concat"
EmbeddingMode embedding_from_string(const std::string& name);
const char* to_string(Upsample u);  ///< "bilinear", "nearest"
Upsample upsample_from_string(const std::string& name);
const char* to_string(Intensity i);  ///< "keep", "standardize", "auto"
Intensity intensity_from_string(const std::string& name);
const char* to_string(Resize r);  ///< "squash", "pad", "fixed"
Resize resize_from_string(const std::string& name);
const char* to_string(BackboneEngine e);  ///< "auto", "dnnl", "opencv"
BackboneEngine engine_from_string(const std::string& name);
const char* to_string(Precision p);  ///< "auto", "fp32", "bf16"
Precision precision_from_string(const std::string& name);

/// The defaults with a preset's values applied: "paper" (the authors' code: resize 256, centre
/// crop 224, paper embedding, squared L2, 10 % coreset), "anomalib" (256, concat, re-weighting,
/// nearest upsampling, reflect-101 blur, 10 % coreset) or "" (this project's defaults).
/// Params::preset records the name. Throws Error(usage) on another name.
Params preset_params(const std::string& preset);

/// A backbone with its defaults filled in: what fit builds, and what a front end shows or runs.
struct BackboneSpec {
  std::string backbone;  ///< as given: a built-in name or an ONNX file
  bool builtin = false;
  std::vector<std::string> layers;  ///< Params::layers, else the backbone's defaults
  std::string normalization;        ///< "imagenet", "m11" or "unit"
  int image_size = 0;               ///< Params::image_size, else the backbone's default
};

/// The one resolver of backbone, layers, normalisation and image size: a built-in backbone's own
/// defaults, an ONNX file's (written by import_torchvision; 224 when it names no size). Throws
/// Error(bad_input) naming the backbone when it is neither built in nor a readable ONNX file,
/// Error(usage) when an ONNX file names no default layers or normalisation and Params gives
/// none, or on an unknown normalisation.
BackboneSpec resolve_backbone(const Params& params);

// ---------------------------------------------------------------------------------------------
// Images

/// 8-bit pixels in memory, not owned: what a caller with a decoded image (a camera frame, a
/// NumPy array, a network request's tensor) passes instead of a file. Channels are interleaved
/// in RGB order (grey: one channel; RGBA: the alpha is ignored); row r starts at
/// data + r * stride.
struct ImageView {
  const uint8_t* data = nullptr;
  int height = 0;
  int width = 0;
  int channels = 3;    ///< 1 (grey), 3 (RGB) or 4 (RGBA)
  int64_t stride = 0;  ///< bytes from one row to the next; 0: width * channels
  /// Names the image in error messages and in Prediction::path ("request input 2").
  std::string name;
};

/// A decoded image that owns its pixels: 8-bit RGB, rows packed.
struct Image {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  ///< height * width * channels bytes
  std::string name;
  int channels = 3;  ///< 3 (RGB), or 1 for a mask
  ImageView view() const { return ImageView{pixels.data(), height, width, channels, 0, name}; }
};

/// What the header of encoded image bytes says, read without decoding any pixel.
struct ImageHeader {
  std::string format;  ///< "png", "jpeg", "bmp", "tiff" or "webp"
  int width = 0;
  int height = 0;
};

/// Reads the size from the header of PNG, JPEG, BMP, TIFF or WebP bytes. Throws Error(bad_input)
/// naming `name` when the bytes are none of these or the header is cut short.
ImageHeader probe_image(const uint8_t* data, size_t size, const std::string& name);

/// Decodes PNG, JPEG, BMP, TIFF or WebP bytes (as they arrive over a network) the way files are
/// read: grey replicated, alpha dropped, 16-bit scaled to 8, truncated JPEG/PNG refused. When
/// max_pixels > 0, an image whose header claims more pixels is refused before any pixel is
/// decoded (a decompression bomb allocates nothing). Throws Error(bad_input) naming `name`.
Image decode_image(const uint8_t* data, size_t size, const std::string& name,
                   int64_t max_pixels = 0);
/// Reads an image file as decode_image() reads bytes. Throws Error(bad_input) naming the file.
Image load_image(const std::filesystem::path& file);
/// Writes an image (grey, RGB or RGBA view) in the format its extension names (.png, .jpg,
/// .bmp, .tif, .webp), creating its folder. Throws Error(bad_input) naming the file when it
/// cannot be written, Error(bad_input) naming the view when the view is invalid.
void write_image(const std::filesystem::path& file, const ImageView& image);

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

/// Sets the size of OpenCV's worker pool, which is process-wide: image decoding, resizing and
/// blurring and the OpenCV engine run on it (TBB shares it among concurrent callers). 0: all
/// cores. Not thread-safe: call it at start, before other threads use the library, if at all;
/// the library itself never resizes it. Throws Error(usage) when negative.
void set_opencv_threads(int threads);

/// Normalised score per Calibration: threshold -> 0.5, clipped to [0, 1].
double normalize_score(double score, double threshold, const Calibration& c);

class Model {
 public:
  /// Fits on normal images. Unreadable images are reported through callbacks.log and skipped;
  /// throws Error(bad_input) when none is left.
  static Model fit(const std::vector<std::filesystem::path>& images, const Params& params,
                   const Callbacks& callbacks = {});
  /// Fits on images in memory (their names appear in messages). Throws Error(bad_input) naming
  /// an invalid view before any work.
  static Model fit(const std::vector<ImageView>& images, const Params& params,
                   const Callbacks& callbacks = {});
  /// Fits a partial model on every shard.count-th image of `images` starting at shard.index,
  /// for merge(). A shard keeps twice its share of the bank (coreset ratio 2 r, floor
  /// ceil(2 coreset_min / count)), so that the merged greedy selection has candidates from
  /// every region of the shard; the partial model records the shard and its patch count.
  /// Throws Error(usage) for an index outside [0, count), Error(bad_input) for an empty shard.
  static Model fit_shard(const std::vector<std::filesystem::path>& images, const Params& params,
                         Shard shard, const Callbacks& callbacks = {});
  /// One model from partial models of the same settings and backbone (fit_shard, or any
  /// models): the greedy coreset over the union of their bank rows, as many picks as a fit on
  /// all their images would make (ratio and floor of the shards' original settings), the
  /// threshold from every part's held-out scores. Throws Error(bad_input) naming the part that
  /// differs from the first, or has no stored held-out scores when another has.
  static Model merge(const std::vector<const Model*>& parts, const Callbacks& callbacks = {});
  /// Adds new normal images: their patches are scored against the bank and picked farthest-
  /// first (the greedy coreset continued) until none lies farther than the coverage radius;
  /// then the thresholds are recalibrated from held-out new images together with the stored
  /// held-out scores. Returns the rows added. The history (info_json) records the update.
  /// Unreadable images are reported through callbacks.log and skipped; throws
  /// Error(bad_input) when none is left, or when the model stores no coverage radius and
  /// params give neither radius nor max_rows.
  int64_t update(const std::vector<std::filesystem::path>& images, const UpdateParams& params = {},
                 const Callbacks& callbacks = {});
  /// The same with pixels in memory.
  int64_t update(const std::vector<ImageView>& images, const UpdateParams& params = {},
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
  /// Pixels in memory; Prediction::path is the view's name. Throws Error(bad_input) naming the
  /// view when its size, channels, stride or data are invalid. Equals the prediction of a
  /// lossless file holding the same pixels.
  Prediction predict(const ImageView& image) const;
  /// Batched, as with paths (the backbone sees the images together); one invalid view throws
  /// before any work, naming it.
  std::vector<Prediction> predict(const std::vector<ImageView>& images,
                                  const Callbacks& callbacks = {}) const;
  /// The prediction's S x S map brought back onto the original image's pixels
  /// (image_height x image_width): resized bilinearly, in pad mode only the image's part of the
  /// map, with a crop placed over the crop's region (elsewhere the map's minimum).
  AnomalyMap image_map(const Prediction& prediction) const;

  const Params& params() const;
  const Calibration& calibration() const;
  void set_calibration(const Calibration& c);
  /// What `info --verify` adds to the checks of load: runs the backbone once on a blank image
  /// and checks that it gives the patch grid and the dimension the memory bank was built with,
  /// and a finite score. Throws Error(bad_input) naming the model file otherwise; returns what
  /// was checked, one line, starting "ok" ("ok, but ..." for a file without checksums).
  std::string verify() const;
  /// Everything `patchcore info` shows, as a JSON text.
  std::string info_json() const;
  /// Side of the square the anomaly maps have (the network input size or the crop).
  int map_size() const;
  /// Floating-point operations of the backbone per image (multiply-adds count two), for
  /// benchmarks; 0 when unknown.
  double backbone_flops_per_image() const;
  /// How the nearest-neighbour search runs, for benchmarks: "bounded" (a lower bound rules out
  /// most of a large bank), "bf16 screen" (a bf16 matrix product rules out most rows of a
  /// smaller one, where the CPU has AMX) or "brute force" (FAISS); all three give the same
  /// neighbours.
  std::string knn_search() const;
  /// Bank rows whose distance was computed exactly per patch, averaged over the predictions so
  /// far; 0 for FAISS's brute force or before any prediction. For benchmarks: the rest of the
  /// bank was ruled out by the bound or the screen.
  double knn_exact_per_patch() const;
  /// Whether the bounded search still takes its coarse bound first (it turns that off where
  /// too many bank rows pass it); false for brute force. For benchmarks.
  bool knn_coarse_stage() const;
  /// Sets the thread count of later predictions (as Params::threads; 0: all cores, shared).
  /// Throws Error(usage) when negative.
  void set_threads(int threads);
  /// Chooses what runs the backbone for later predictions (a loaded model starts at Params'
  /// default, automatic).
  void set_engine(BackboneEngine engine);
  /// "dnnl" or "opencv": the engine that runs (or will run) the backbone.
  std::string backbone_engine() const;
  /// Chooses the backbone's arithmetic for later predictions (a loaded model starts at Params'
  /// default, fp32: precision is not stored in the file).
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

// ---------------------------------------------------------------------------------------------
// Pictures of a prediction

/// The prediction's heatmap (jet, the calibration's scale: the pixel threshold in the middle)
/// blended over its image, the region at or above the pixel threshold outlined in white: RGB,
/// at the image's size, as `patchcore predict --out` writes it. `image` is the image predicted
/// (its size must be the prediction's). Throws Error(usage) when the prediction is not this
/// model's or the sizes differ, Error(bad_input) naming an invalid view.
Image heatmap_overlay(const Model& model, const Prediction& prediction, const ImageView& image);
/// One channel, 255 where the image's pixels score at or above the pixel threshold, else 0.
Image predicted_mask(const Model& model, const Prediction& prediction);

// ---------------------------------------------------------------------------------------------
// Data sets: an MVTec AD category folder or a plain folder of images

struct Sample {
  std::filesystem::path image;
  std::string kind;  ///< "good" or the defect kind (the test sub-folder); "" for a plain folder
  int label = -1;    ///< 0 normal, 1 anomalous, -1 unknown
  std::optional<std::filesystem::path> mask;  ///< ground truth, when it exists
};

struct Dataset {
  bool mvtec = false;         ///< train/good exists
  std::vector<Sample> train;  ///< MVTec: train/good; plain folder: every image
  std::vector<Sample> test;   ///< MVTec: test/<kind>/*; plain folder: empty
};

/// Image files directly in dir (png, jpg, jpeg, bmp, tif, tiff, webp; case-insensitive), sorted
/// by name; files named *_mask.png and hidden files (".name", e.g. macOS "._x.png") are left out.
/// Throws Error(bad_input) naming dir when it does not exist or is not a folder.
std::vector<std::filesystem::path> list_images(const std::filesystem::path& dir);

/// MVTec masks: ground_truth/<kind>/<stem>_mask.png, else <stem>.png; "good" never has one.
/// Throws Error(bad_input) naming dir when it does not exist, is not a folder, or holds no
/// image where one is needed (the folder itself, or train/good in the MVTec layout).
Dataset scan_dataset(const std::filesystem::path& dir);

struct SyntheticParams {
  int size = 160;        ///< image side in pixels
  int n_train = 30;      ///< normal training images
  int n_test_good = 10;  ///< normal test images
  int n_per_defect = 8;  ///< per defect kind: "scratch", "spot", "stain"
  uint64_t seed = 1;
  /// Blue, green and red gains of the texture's grey (the default: a warm beige); another
  /// triple makes a new normal variant of the same weave (tests of Model::update).
  double tint[3] = {0.80, 0.90, 1.0};
};

/// The demo's data: writes dir/train/good, dir/test/{good,scratch,spot,stain} and
/// dir/ground_truth/<kind>/<stem>_mask.png: a woven texture with random jitter, noise and
/// lighting; defects painted on top with their masks. Deterministic for a seed. Throws
/// Error(bad_input) when dir cannot be written.
void write_synthetic_dataset(const std::filesystem::path& dir, const SyntheticParams& p);

// ---------------------------------------------------------------------------------------------
// Evaluation on labelled images

struct EvalOptions {
  /// Gets metrics.json, predictions.csv, images/ and report.html; empty: no file is written.
  std::filesystem::path out_dir;
  bool write_images = true;  ///< overlays and predicted masks under images/<kind>/
};

struct EvalResult {
  /// What metrics.json holds: image_auroc, pixel_auroc, aupro, image_f1, image_threshold,
  /// n_images, n_skipped, per_kind, ... (null where a metric cannot be computed).
  std::string metrics_json;
  Calibration f1_calibration;  ///< the F1-optimal thresholds (eval --save-threshold stores them)
  bool has_f1 = false;
};

/// Predicts every labelled test sample, computes image AUROC (overall and per kind against
/// "good"), pixel AUROC and AUPRO at the model's map size (masks given the same geometry), the
/// F1-optimal threshold, and the decisions at the model's own threshold; writes the outputs when
/// o.out_dir is set. An unreadable image is reported through callbacks.log and left out. Throws
/// Error(bad_input) when no test image is labelled or the output folder cannot be written.
EvalResult evaluate(const Model& model, const std::vector<Sample>& test, const EvalOptions& o,
                    const Callbacks& callbacks = {});
/// The same on a data set folder's test images (MVTec layout: test/good, test/<defect>).
/// Throws Error(bad_input) naming the folder when it holds no labelled test images.
EvalResult evaluate(const Model& model, const std::filesystem::path& data, const EvalOptions& o,
                    const Callbacks& callbacks = {});

// ---------------------------------------------------------------------------------------------
// Backbones: raw features, imported weights, benchmarks

/// One layer's features: shape [N, C, h, w], values row-major.
struct FeatureMap {
  std::string layer;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

/// A backbone run on its own, outside a model: what `patchcore features` and the engine
/// comparison of `patchcore bench` use. Not thread-safe: one call at a time per extractor.
class FeatureExtractor {
 public:
  /// The backbone, layers and normalisation of params (resolve_backbone), for network inputs of
  /// height x width (a built-in backbone is converted for that size, possibly not square; an
  /// ONNX file is used as it is), run by params.engine in params.precision on params.threads
  /// (0: all cores, shared). Backbone notes (a precision or engine it could not honour) are in
  /// notes(). Throws as resolve_backbone, and Error(bad_input) when the graph cannot be built.
  FeatureExtractor(const Params& params, int height, int width);
  /// One image: normalised as it is when it has the input's size, else resized (bilinear) to a
  /// square input first; Error(usage) for another size on a non-square input. [1, C, h, w] per
  /// layer, in the order of layers().
  std::vector<FeatureMap> extract(const ImageView& image);
  /// n inputs already normalised, planar: n * 3 * height * width floats.
  std::vector<FeatureMap> extract(const float* input, int n);
  const std::vector<std::string>& layers() const;
  std::string normalization() const;
  /// "dnnl" or "opencv".
  std::string engine() const;
  /// "fp32" or "bf16": what the backbone runs in.
  std::string precision() const;
  /// What the backbone could not do as asked (e.g. bf16 on a CPU without bf16 kernels).
  const std::vector<std::string>& notes() const;
  /// Floating-point operations per input (multiply-adds count two); 0 when unknown.
  double flops_per_image();

  FeatureExtractor(FeatureExtractor&&) noexcept;
  FeatureExtractor& operator=(FeatureExtractor&&) noexcept;
  ~FeatureExtractor();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Writes a feature map as a NumPy .npy file (float32, C order, its shape), atomically. Throws
/// Error(bad_input) naming the file when it cannot be written.
void write_npy(const std::filesystem::path& file, const FeatureMap& map);

/// torchvision architectures import_torchvision() converts: resnet18/34/50/101/152,
/// wide_resnet50_2, wide_resnet101_2.
std::vector<std::string> torchvision_arch_names();
/// Converts a torchvision ResNet / Wide ResNet state_dict (.pth) into an ONNX backbone with
/// outputs layer1..layer<last_layer> and defaults (layers layer2,layer3, imagenet normalisation,
/// 224) in its metadata; writes `out` atomically. Returns its source identity
/// ("torchvision:<arch>:sha256:<hex>"). Throws Error(usage) on an unknown arch or last_layer
/// outside 1..4, Error(bad_input) naming the file otherwise. Nothing is downloaded.
std::string import_torchvision(const std::string& arch, const std::filesystem::path& weights_file,
                               const std::filesystem::path& out, int last_layer = 3);

/// The machine's single-precision matrix multiply rate in GFLOP/s on `threads` threads (0: all
/// cores), best of 3 at the nearest-neighbour search's shape (1,225 x 1,024 by 4,096 x 1,024):
/// the yardstick of benchmarks.
double sgemm_gflops(int threads);

/// The instruction set oneDNN runs on here (within DNNL_MAX_CPU_ISA), e.g. "avx512_core_amx",
/// "avx512_core_bf16" or "avx2": what the dnnl engine's kernels and the nearest-neighbour
/// search's bf16 screen use. For benchmarks.
std::string dnnl_isa();

}  // namespace patchcore
