#include "backbone.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>
#include <set>
#include <sstream>

#include "backbone_ops.h"
#include "dnnl_cpu.h"
#include "error.h"
#include "file_io.h"
#include "keras_onnx.h"
#include "onnx_graph.h"
#include "sha256.h"

namespace patchcore {

namespace fs = std::filesystem;

namespace {

// What OpenCV needs to know before running a graph: its declared input and which tensors exist.
struct GraphFacts {
  std::vector<int64_t> input_shape;  // 0 where the dimension is symbolic
  std::set<std::string> tensors;     // every node output
};

GraphFacts inspect_onnx(const std::vector<uint8_t>& bytes, const std::string& where) {
  const onnx::ModelProto model = parse_onnx(bytes, where);
  GraphFacts facts;
  facts.input_shape = image_input(model, where).shape;
  for (const auto& n : model.graph().node()) {
    for (const auto& o : n.output()) facts.tensors.insert(o);
  }
  return facts;
}

class OpenCvBackbone : public Backbone {
 public:
  OpenCvBackbone(const std::vector<uint8_t>& onnx, const std::vector<std::string>& layers)
      : layers_(layers) {
    const std::string where = "ONNX backbone graph";
    if (layers.empty()) throw_bad_input(where, "no output layer requested");
    const GraphFacts facts = inspect_onnx(onnx, where);
    input_shape_ = facts.input_shape;
    for (const std::string& l : layers) {
      if (!facts.tensors.count(l)) throw_bad_input(where, "no layer output named '" + l + "'");
    }
    for (const std::string& l : layers) out_names_.push_back(cv::String(l));
    try {
      net_ = cv::dnn::readNetFromONNX(reinterpret_cast<const char*>(onnx.data()), onnx.size());
      net_.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
      net_.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
    } catch (const cv::Exception& e) {
      throw_bad_input(where, std::string("OpenCV cannot load the graph: ") + e.what());
    }
    if (net_.empty()) throw_bad_input(where, "OpenCV loaded an empty network");
  }

  double flops_per_image(int height, int width) override {
    try {
      return static_cast<double>(net_.getFLOPS(cv::dnn::MatShape{1, 3, height, width}));
    } catch (const cv::Exception&) {
      return 0;  // some layer cannot report its cost: the benchmark says so
    }
  }

  // One image at a time (see the header): measured on OpenCV 4.6, a batch of 4 through the same
  // graph was no faster per image and differed from single runs in the last bits.
  std::vector<Tensor> forward(const Tensor& batch) override {
    check_batch_shape(input_shape_, batch);
    const int n = static_cast<int>(batch.shape[0]);
    const int64_t per_image = batch.numel() / std::max(n, 1);
    std::vector<Tensor> out(layers_.size());
    if (n == 0) return out;
    const int dims[4] = {1, static_cast<int>(batch.shape[1]), static_cast<int>(batch.shape[2]),
                         static_cast<int>(batch.shape[3])};
    for (int i = 0; i < n; ++i) {
      // A header over the caller's data; OpenCV copies it into its own input blob.
      cv::Mat input(4, dims, CV_32F, const_cast<float*>(batch.ptr() + i * per_image));
      std::vector<cv::Mat> results;
      try {
        net_.setInput(input);
        net_.forward(results, out_names_);
      } catch (const cv::Exception& e) {
        throw Error(ErrorKind::bad_input,
                    std::string("OpenCV DNN failed to run the backbone: ") + e.what());
      }
      PATCHCORE_ASSERT(results.size() == layers_.size());
      for (size_t k = 0; k < results.size(); ++k) {
        const cv::Mat& r = results[k];
        PATCHCORE_ASSERT(r.dims == 4 && r.size[0] == 1 && r.type() == CV_32F && r.isContinuous());
        Tensor& t = out[k];
        if (i == 0) t = Tensor({n, r.size[1], r.size[2], r.size[3]});
        PATCHCORE_ASSERT(t.dim(1) == r.size[1] && t.dim(2) == r.size[2] && t.dim(3) == r.size[3]);
        const size_t count = r.total();
        std::memcpy(t.ptr() + i * count, r.ptr<float>(), count * sizeof(float));
      }
    }
    return out;
  }

  const std::vector<std::string>& layers() const override { return layers_; }
  std::string engine() const override { return "opencv"; }

 private:
  std::vector<std::string> layers_;
  std::vector<cv::String> out_names_;
  std::vector<int64_t> input_shape_;
  cv::dnn::Net net_;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::unique_ptr<Backbone> make_opencv_backbone(const std::vector<uint8_t>& onnx,
                                               const std::vector<std::string>& layers,
                                               int /*threads*/) {
  return std::make_unique<OpenCvBackbone>(onnx, layers);
}

std::unique_ptr<Backbone> make_dnnl_backbone(const std::vector<uint8_t>& onnx,
                                             const std::vector<std::string>& layers, int threads,
                                             Precision precision) {
  const bool has_bf16 = dnnl_has_bf16();
  std::string why;
  auto b = try_dnnl_backbone(onnx, layers, threads,
                             precision == Precision::bf16        ? has_bf16
                             : precision == Precision::automatic ? has_bf16
                                                                 : false,
                             &why);
  if (!b) {
    throw_bad_input("ONNX backbone graph",
                    "the oneDNN engine cannot run it: " + why + " (use the OpenCV engine)");
  }
  if (precision == Precision::bf16 && !has_bf16) {
    b->add_note("precision bf16: oneDNN has no bf16 kernels for this CPU (its instruction set: " +
                dnnl_isa_name() + "), the backbone runs fp32");
  }
  return b;
}

std::unique_ptr<Backbone> make_backbone(const std::vector<uint8_t>& onnx,
                                        const std::vector<std::string>& layers, int threads,
                                        BackboneEngine engine, Precision precision) {
  std::unique_ptr<Backbone> b;
  switch (engine) {
    case BackboneEngine::dnnl:
      return make_dnnl_backbone(onnx, layers, threads, precision);
    case BackboneEngine::opencv:
      b = make_opencv_backbone(onnx, layers, threads);
      break;
    case BackboneEngine::automatic: {
      std::string why;
      if (auto d = try_dnnl_backbone(onnx, layers, threads,
                                     precision != Precision::fp32 && dnnl_has_bf16(), &why)) {
        if (precision == Precision::bf16 && !dnnl_has_bf16()) {
          d->add_note(
              "precision bf16: oneDNN has no bf16 kernels for this CPU (its instruction "
              "set: " +
              dnnl_isa_name() + "), the backbone runs fp32");
        }
        return d;
      }
      b = make_opencv_backbone(onnx, layers, threads);
      b->add_note("engine auto: oneDNN cannot run the graph (" + why + "), OpenCV runs it");
      break;
    }
  }
  if (precision == Precision::bf16) {
    b->add_note("precision bf16: the " + b->engine() + " engine runs fp32 only");
  }
  return b;
}

BackboneEngine engine_from_string(const std::string& name) {
  if (name == "auto") return BackboneEngine::automatic;
  if (name == "dnnl") return BackboneEngine::dnnl;
  if (name == "opencv") return BackboneEngine::opencv;
  throw_usage("unknown engine '" + name + "' (expected auto, dnnl or opencv)");
}

Precision precision_from_string(const std::string& name) {
  if (name == "auto") return Precision::automatic;
  if (name == "fp32") return Precision::fp32;
  if (name == "bf16") return Precision::bf16;
  throw_usage("unknown precision '" + name + "' (expected auto, fp32 or bf16)");
}

std::optional<BackboneInfo> builtin_backbone(const std::string& name) {
  BackboneInfo info;
  info.name = name;
  info.builtin = true;
  info.normalization = Normalization::m11;
  if (name == "inception_v3") {
    info.default_layers = {"mixed2", "mixed5"};
    info.default_image_size = 299;
  } else if (name == "mobilenet_v2") {
    info.default_layers = {"block_5_expand_relu", "block_10_expand_relu"};
    info.default_image_size = 224;
  } else {
    return std::nullopt;
  }
  return info;
}

BackboneInfo onnx_backbone_info(const fs::path& file) {
  const std::string where = file.string();
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) throw_bad_input(where, "no such backbone file");
  const std::string bytes = read_file(file);
  onnx::ModelProto model;
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    throw_bad_input(where, "not an ONNX model");
  }
  BackboneInfo info;
  info.name = where;
  info.has_normalization = false;
  info.default_image_size = 0;
  for (const auto& prop : model.metadata_props()) {
    const std::string& v = prop.value();
    if (prop.key() == "patchcore.layers") {
      info.default_layers.clear();
      std::stringstream ss(v);
      std::string layer;
      while (std::getline(ss, layer, ',')) {
        if (layer.empty()) throw_bad_input(where, "empty name in patchcore.layers '" + v + "'");
        info.default_layers.push_back(layer);
      }
    } else if (prop.key() == "patchcore.normalization") {
      // Parsed here: the backbone library does not link the image module.
      if (v == "imagenet") {
        info.normalization = Normalization::imagenet;
      } else if (v == "m11") {
        info.normalization = Normalization::m11;
      } else if (v == "unit") {
        info.normalization = Normalization::unit;
      } else {
        throw_bad_input(
            where, "unknown patchcore.normalization '" + v + "' (expected imagenet, m11 or unit)");
      }
      info.has_normalization = true;
    } else if (prop.key() == "patchcore.image_size") {
      int size = 0;
      size_t used = 0;
      try {
        size = std::stoi(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != v.size() || size <= 0) {
        throw_bad_input(where, "patchcore.image_size '" + v + "' is not a positive integer");
      }
      info.default_image_size = size;
    }
  }
  return info;
}

fs::path backbone_dir() {
  if (const char* env = std::getenv("PATCHCORE_BACKBONES"); env != nullptr && *env != '\0') {
    return fs::path(env);
  }
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path() / "backbones";
    if (fs::is_directory(beside, ec)) return beside;
    // <prefix>/bin/patchcore -> <prefix>/share/patchcore/backbones
    return exe.parent_path().parent_path() / "share" / "patchcore" / "backbones";
  }
  return fs::path("backbones");
}

BackboneGraph build_backbone_graph(const std::string& name_or_path,
                                   const std::vector<std::string>& layers, int input_size) {
  BackboneGraph graph;
  if (const auto info = builtin_backbone(name_or_path)) {
    if (input_size <= 0)
      throw_usage("image size must be positive, got " + std::to_string(input_size));
    const fs::path dir = backbone_dir() / name_or_path;
    if (!fs::is_regular_file(dir / "model.json")) {
      throw_bad_input(dir.string(), "built-in backbone '" + name_or_path +
                                        "' is not installed (run scripts/setup, or set "
                                        "PATCHCORE_BACKBONES to the folder holding it)");
    }
    const KerasModel model = load_keras_model(dir);
    graph.onnx = keras_to_onnx(model, input_size, input_size,
                               layers.empty() ? info->default_layers : layers);
    graph.identity = "keras:" + name_or_path + ":sha256:" + model.weights_sha256;
    return graph;
  }
  if (ends_with(name_or_path, ".onnx")) {
    const std::string bytes = read_file(name_or_path);
    graph.onnx.assign(bytes.begin(), bytes.end());
    const GraphFacts facts = inspect_onnx(graph.onnx, name_or_path);
    for (const std::string& l : layers) {
      if (!facts.tensors.count(l)) {
        throw_bad_input(name_or_path, "the graph has no layer output named '" + l + "'");
      }
    }
    graph.identity = "onnx:sha256:" + sha256_hex(bytes.data(), bytes.size());
    return graph;
  }
  throw_bad_input(name_or_path,
                  "unknown backbone: neither a built-in name (inception_v3, mobilenet_v2) nor an "
                  ".onnx file");
}

}  // namespace patchcore
