// The CNN that turns images into feature maps, behind an engine-neutral interface.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "image.h"
#include "tensor.h"

namespace patchcore {

/// A network truncated after its deepest requested layer, in inference mode.
class Backbone {
 public:
  virtual ~Backbone() = default;
  /// batch: [N, 3, H, W] already normalised, H x W the size the backbone was built for
  /// (Error(usage) otherwise). Returns one [N, C, h, w] tensor per layer, in the order of
  /// layers(). Each image's features are the same whatever else is in the batch.
  virtual std::vector<Tensor> forward(const Tensor& batch) = 0;
  virtual const std::vector<std::string>& layers() const = 0;
  /// Floating-point operations of one forward pass on a height x width image (multiply-adds
  /// count two), for benchmarks; 0 when the engine cannot tell.
  virtual double flops_per_image(int height, int width) = 0;
  /// "dnnl" or "opencv", for benchmarks.
  virtual std::string engine() const = 0;
  /// "fp32" or "bf16": the arithmetic the backbone runs in.
  virtual std::string precision() const { return "fp32"; }
  /// Why the engine or precision asked for is not the one that runs (log lines for the user);
  /// empty when it is.
  const std::vector<std::string>& notes() const { return notes_; }
  void add_note(std::string note) { notes_.push_back(std::move(note)); }

 private:
  std::vector<std::string> notes_;
};

/// OpenCV DNN on an ONNX graph held in memory. Throws Error(bad_input) when the graph does not
/// load or lacks a requested output. threads is not used: OpenCV runs on its process-wide pool,
/// which the library never resizes (set_opencv_threads() in the public API). Images run one at
/// a time: OpenCV 4.6 accepts a batch on a graph declared for N = 1 but is no faster with it,
/// and one image at a time keeps every image's result bit-identical whatever batch it comes in.
std::unique_ptr<Backbone> make_opencv_backbone(const std::vector<uint8_t>& onnx,
                                               const std::vector<std::string>& layers, int threads);

/// The oneDNN engine (dnnl_backbone.cpp): an interpreter for the operators the built-in and
/// imported backbones use (Conv, depthwise and grouped ones included, Relu, Clip, Add, Mul by
/// a constant, Concat along channels, MaxPool, AveragePool, constant Pad, BatchNormalization,
/// Identity) as oneDNN primitives, ReLU / Clip fused as post-ops, built once per input size
/// and thread count, activations NHWC throughout. Only the nodes the layers depend on are
/// read. Precision::fp32 equals the plain forward to float rounding (1e-5
/// relative); bf16 rounds weights and activations to bf16 (accumulating in fp32), and
/// automatic takes bf16 where oneDNN has bf16 kernels for this CPU (AVX-512 BF16 or AMX).
/// bf16 asked for on a CPU without them runs fp32 and says so in notes(). Images run one at
/// a time, each layer on all threads: every image's features are the same whatever the batch.
/// threads <= 0: the caller's OpenMP count. Throws Error(bad_input) when the graph does not
/// parse, lacks a layer, or uses an operator or attribute the engine does not implement (the
/// message names the node).
std::unique_ptr<Backbone> make_dnnl_backbone(const std::vector<uint8_t>& onnx,
                                             const std::vector<std::string>& layers, int threads,
                                             Precision precision);

/// The backbone of the chosen engine and precision. BackboneEngine::automatic takes oneDNN
/// when it implements every operator the layers need, else OpenCV (with a note saying why).
/// The opencv engine runs fp32 only: bf16 asked of it is noted and runs fp32.
std::unique_ptr<Backbone> make_backbone(const std::vector<uint8_t>& onnx,
                                        const std::vector<std::string>& layers, int threads,
                                        BackboneEngine engine,
                                        Precision precision = Precision::fp32);

/// What is known about a backbone before running it.
struct BackboneInfo {
  std::string name;                         ///< "inception_v3", "mobilenet_v2" or the file path
  std::vector<std::string> default_layers;  ///< shallow to deep
  Normalization normalization = Normalization::m11;
  bool has_normalization = true;  ///< false: an ONNX file that does not say
  int default_image_size = 224;
  bool builtin = false;
};

/// The built-in backbones, by name. Empty when the name is not built in.
std::optional<BackboneInfo> builtin_backbone(const std::string& name);

/// Defaults stored in an ONNX file's metadata_props by `patchcore import` ("patchcore.layers":
/// comma-separated, "patchcore.normalization", "patchcore.image_size"); fields absent from the
/// file stay empty / 0. Throws Error(bad_input) naming the file when it is missing or not ONNX.
BackboneInfo onnx_backbone_info(const std::filesystem::path& file);

/// Folder holding the built-in Keras backbones (<dir>/<name>/model.json): $PATCHCORE_BACKBONES
/// if set, else "backbones" beside the running executable, else <prefix>/share/patchcore/backbones.
std::filesystem::path backbone_dir();

/// A backbone as ONNX bytes for a given input size, plus its identity.
struct BackboneGraph {
  std::vector<uint8_t> onnx;
  std::string identity;  ///< e.g. "keras:inception_v3:sha256:<hex>" or "onnx:sha256:<hex>"
};

/// Builds the graph of a built-in backbone (converted from Keras for input_size x input_size,
/// up to the deepest of `layers`; empty layers: the default ones) or reads an ONNX file (a
/// path ending in .onnx, used as is: input_size is then the file's business; every requested
/// layer must be a node output). Throws Error(bad_input) naming the file or the name when it
/// cannot, e.g. when the built-in folder is missing (run scripts/setup).
BackboneGraph build_backbone_graph(const std::string& name_or_path,
                                   const std::vector<std::string>& layers, int input_size);

}  // namespace patchcore
