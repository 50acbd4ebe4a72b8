// A backbone run on its own (FeatureExtractor), feature maps as .npy, and the sgemm yardstick.
#include <algorithm>
#include <chrono>
#include <vector>

#include "backbone.h"
#include "blas.h"
#include "call_threads.h"
#include "dnnl_cpu.h"
#include "error.h"
#include "image.h"
#include "keras_onnx.h"
#include "npy.h"
#include "patchcore/patchcore.h"

namespace fs = std::filesystem;

namespace patchcore {

struct FeatureExtractor::Impl {
  std::vector<std::string> layers;
  Normalization normalization = Normalization::m11;
  int height = 0, width = 0;
  int threads = 0;
  std::unique_ptr<Backbone> net;
};

namespace {

// The graph for inputs of height x width: a built-in backbone converted for that size (Keras
// graphs are converted for one size, possibly not square), an ONNX file as it is.
std::vector<uint8_t> backbone_graph(const BackboneSpec& spec, int height, int width) {
  if (!spec.builtin) return build_backbone_graph(spec.backbone, spec.layers, 0).onnx;
  const fs::path dir = backbone_dir() / spec.backbone;
  if (!fs::is_regular_file(dir / "model.json"))
    throw_bad_input(dir.string(), "built-in backbone '" + spec.backbone +
                                      "' is not installed (run scripts/setup, or set "
                                      "PATCHCORE_BACKBONES to the folder holding it)");
  return keras_to_onnx(load_keras_model(dir), height, width, spec.layers);
}

// The image as a normalised planar input of its own size: preprocess_into works on squares, so
// the image goes into the corner of a square canvas of its longer side (resizing a square to
// its own size is a copy) and is cut out again.
void normalise_own_size(const cv::Mat& rgb, Normalization norm, float* dst) {
  const int h = rgb.rows, w = rgb.cols, side = std::max(h, w);
  cv::Mat canvas(side, side, CV_8UC3, cv::Scalar::all(0));
  rgb.copyTo(canvas(cv::Rect(0, 0, w, h)));
  std::vector<float> square(3 * static_cast<size_t>(side) * side);
  preprocess_into(canvas, Preprocess{side, 0, norm}, square.data());
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < h; ++y)
      std::copy_n(square.data() + (static_cast<size_t>(c) * side + y) * side, w,
                  dst + (static_cast<size_t>(c) * h + y) * w);
}

}  // namespace

FeatureExtractor::FeatureExtractor(const Params& params, int height, int width)
    : impl_(std::make_unique<Impl>()) {
  if (height < 1 || width < 1)
    throw_usage("feature extraction: the input size must be positive, got " +
                std::to_string(height) + " x " + std::to_string(width));
  if (params.threads < 0) throw_usage("threads must be >= 0 (0: all cores)");
  const BackboneSpec spec = resolve_backbone(params);
  impl_->layers = spec.layers;
  impl_->normalization = normalization_from_string(spec.normalization);
  impl_->height = height;
  impl_->width = width;
  impl_->threads = params.threads;
  impl_->net = make_backbone(backbone_graph(spec, height, width), spec.layers, 0, params.engine,
                             params.precision);
}

FeatureExtractor::FeatureExtractor(FeatureExtractor&&) noexcept = default;
FeatureExtractor& FeatureExtractor::operator=(FeatureExtractor&&) noexcept = default;
FeatureExtractor::~FeatureExtractor() = default;

const std::vector<std::string>& FeatureExtractor::layers() const { return impl_->layers; }
std::string FeatureExtractor::normalization() const { return to_string(impl_->normalization); }
std::string FeatureExtractor::engine() const { return impl_->net->engine(); }
std::string FeatureExtractor::precision() const { return impl_->net->precision(); }
const std::vector<std::string>& FeatureExtractor::notes() const { return impl_->net->notes(); }
double FeatureExtractor::flops_per_image() {
  return impl_->net->flops_per_image(impl_->height, impl_->width);
}

std::vector<FeatureMap> FeatureExtractor::extract(const float* input, int n) {
  if (n < 1) throw_usage("feature extraction: no input (n = " + std::to_string(n) + ")");
  PATCHCORE_ASSERT(input != nullptr);
  Tensor batch({n, 3, impl_->height, impl_->width});
  std::copy_n(input, batch.numel(), batch.ptr());
  std::vector<Tensor> maps;
  {
    const CallThreads threads(impl_->threads);
    maps = impl_->net->forward(batch);
  }
  std::vector<FeatureMap> out(maps.size());
  for (size_t k = 0; k < maps.size(); ++k) {
    out[k].layer = impl_->layers[k];
    out[k].shape = std::move(maps[k].shape);
    out[k].values = std::move(maps[k].data);
  }
  return out;
}

std::vector<FeatureMap> FeatureExtractor::extract(const ImageView& image) {
  const cv::Mat rgb = view_rgb(image);
  const int h = impl_->height, w = impl_->width;
  std::vector<float> input(3 * static_cast<size_t>(h) * w);
  if (rgb.rows == h && rgb.cols == w) {
    normalise_own_size(rgb, impl_->normalization, input.data());
  } else if (h == w) {
    preprocess_into(rgb, Preprocess{h, 0, impl_->normalization}, input.data());
  } else {
    throw_usage("feature extraction: the image " + image.name + " (" + std::to_string(rgb.rows) +
                " x " + std::to_string(rgb.cols) + ") is not the input's size (" +
                std::to_string(h) + " x " + std::to_string(w) + "), which is not square");
  }
  return extract(input.data(), 1);
}

void write_npy(const fs::path& file, const FeatureMap& map) {
  Tensor t;
  t.shape = map.shape;
  t.data = map.values;
  PATCHCORE_ASSERT(Tensor::count(t.shape) == t.numel());
  write_npy(file, t);
}

std::string dnnl_isa() { return dnnl_isa_name(); }

double sgemm_gflops(int threads) {
  const int m = 4096, n = 1225, k = 1024;
  std::vector<float> a(static_cast<size_t>(m) * k, 0.5f), b(static_cast<size_t>(n) * k, 0.25f),
      c(static_cast<size_t>(m) * n);
  const CallThreads scope(threads);
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

}  // namespace patchcore
