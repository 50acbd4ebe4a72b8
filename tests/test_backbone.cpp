// OpenCV DNN running Keras graphs converted by keras_onnx, checked against a plain NHWC forward
// pass written here from Keras' definitions (TensorFlow 'same' padding, padding-excluding
// average pooling), on synthetic models and on the real built-in backbones.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <random>

#include "backbone.h"
#include "backbone_ops.h"
#include "dnnl_cpu.h"
#include "error.h"
#include "keras_onnx.h"
#include "sha256.h"
#include "test_support.h"

namespace patchcore {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Synthetic Keras models with random weights.

class KerasBuilder {
 public:
  explicit KerasBuilder(int64_t channels, uint32_t seed = 1) : rng_(seed) {
    layers_.push_back({{"name", "input_1"},
                       {"class_name", "InputLayer"},
                       {"config", {{"batch_input_shape", {nullptr, nullptr, nullptr, channels}}}},
                       {"inbound_nodes", json::array()}});
    channels_["input_1"] = channels;
  }

  std::string conv(const std::string& name, const std::string& in, int64_t filters, int kh, int kw,
                   int stride, const std::string& padding, bool bias = false,
                   const std::string& activation = "linear", int dilation = 1) {
    const int64_t cin = channels_.at(in);
    random_weight(name + "/kernel", {kh, kw, cin, filters}, 1.0 / std::sqrt(kh * kw * cin));
    if (bias) random_weight(name + "/bias", {filters}, 0.5);
    return add_layer("Conv2D", name,
                     {{"filters", filters},
                      {"kernel_size", {kh, kw}},
                      {"strides", {stride, stride}},
                      {"padding", padding},
                      {"data_format", "channels_last"},
                      {"dilation_rate", {dilation, dilation}},
                      {"activation", activation},
                      {"use_bias", bias}},
                     {in}, filters);
  }

  std::string depthwise(const std::string& name, const std::string& in, int k, int stride,
                        const std::string& padding, int mult = 1) {
    const int64_t cin = channels_.at(in);
    random_weight(name + "/depthwise_kernel", {k, k, cin, mult}, 1.0 / k);
    return add_layer("DepthwiseConv2D", name,
                     {{"kernel_size", {k, k}},
                      {"strides", {stride, stride}},
                      {"padding", padding},
                      {"depth_multiplier", mult},
                      {"activation", "linear"},
                      {"use_bias", false}},
                     {in}, cin * mult);
  }

  std::string bn(const std::string& name, const std::string& in, bool scale, bool center = true) {
    const int64_t c = channels_.at(in);
    random_weight(name + "/moving_mean", {c}, 0.5);
    random_weight(name + "/moving_variance", {c}, 0.5, 1.0);  // in [0.5, 1.5]
    if (scale) random_weight(name + "/gamma", {c}, 0.5, 1.0);
    if (center) random_weight(name + "/beta", {c}, 0.5);
    return add_layer("BatchNormalization", name,
                     {{"axis", 3}, {"epsilon", 1e-3}, {"center", center}, {"scale", scale}}, {in},
                     c);
  }

  std::string relu(const std::string& name, const std::string& in,
                   std::optional<double> max_value) {
    json cfg = {{"negative_slope", 0}, {"threshold", 0}};
    cfg["max_value"] = max_value ? json(*max_value) : json(nullptr);
    return add_layer("ReLU", name, cfg, {in}, channels_.at(in));
  }

  std::string activation(const std::string& name, const std::string& in, const std::string& a) {
    return add_layer("Activation", name, {{"activation", a}}, {in}, channels_.at(in));
  }

  std::string add(const std::string& name, const std::vector<std::string>& ins) {
    return add_layer("Add", name, json::object(), ins, channels_.at(ins[0]));
  }

  std::string concat(const std::string& name, const std::vector<std::string>& ins) {
    int64_t c = 0;
    for (const auto& i : ins) c += channels_.at(i);
    return add_layer("Concatenate", name, {{"axis", -1}}, ins, c);
  }

  std::string pool(const std::string& cls, const std::string& name, const std::string& in, int k,
                   int stride, const std::string& padding) {
    return add_layer(cls, name,
                     {{"pool_size", {k, k}},
                      {"strides", {stride, stride}},
                      {"padding", padding},
                      {"data_format", "channels_last"}},
                     {in}, channels_.at(in));
  }

  std::string zero_pad(const std::string& name, const std::string& in, int t, int b, int l, int r) {
    return add_layer("ZeroPadding2D", name, {{"padding", {{t, b}, {l, r}}}}, {in},
                     channels_.at(in));
  }

  std::string add_layer(const std::string& cls, const std::string& name, json config,
                        const std::vector<std::string>& ins, int64_t channels) {
    config["name"] = name;
    json inbound = json::array();
    for (const auto& i : ins) inbound.push_back({i, 0, 0, json::object()});
    layers_.push_back({{"name", name},
                       {"class_name", cls},
                       {"config", config},
                       {"inbound_nodes", json::array({inbound})}});
    channels_[name] = channels;
    return name;
  }

  KerasModel model() const {
    KerasModel m;
    m.layers = layers_;
    m.weights = weights_;
    m.weights_sha256 = "synthetic";
    return m;
  }

  /// The on-disk layout of scripts/tfjs_dump.js.
  void write(const fs::path& dir) const {
    json table = json::array();
    std::vector<float> all;
    for (const auto& [name, t] : weights_) {
      table.push_back({{"name", name}, {"shape", t.shape}, {"offset", all.size()}});
      all.insert(all.end(), t.data.begin(), t.data.end());
    }
    json doc = {{"modelTopology",
                 {{"model_config", {{"class_name", "Model"}, {"config", {{"layers", layers_}}}}}}},
                {"weights", table}};
    testing::write_bytes(dir / "model.json", doc.dump());
    testing::write_bytes(dir / "weights.bin",
                         std::string(reinterpret_cast<const char*>(all.data()), all.size() * 4));
  }

 private:
  void random_weight(const std::string& name, std::vector<int64_t> shape, double spread,
                     double centre = 0.0) {
    Tensor t(std::move(shape));
    std::uniform_real_distribution<double> u(centre - spread, centre + spread);
    for (float& v : t.data) v = static_cast<float>(u(rng_));
    weights_[name] = std::move(t);
  }

  std::mt19937 rng_;
  json layers_ = json::array();
  std::map<std::string, Tensor> weights_;
  std::map<std::string, int64_t> channels_;
};

// ---------------------------------------------------------------------------------------------
// The plain forward pass: NHWC, double accumulation, one image.

struct Image {
  int64_t h = 0, w = 0, c = 0;
  std::vector<double> v;
  Image() = default;
  Image(int64_t h_, int64_t w_, int64_t c_) : h(h_), w(w_), c(c_), v(h_ * w_ * c_, 0.0) {}
  double& at(int64_t y, int64_t x, int64_t ch) { return v[(y * w + x) * c + ch]; }
  double at(int64_t y, int64_t x, int64_t ch) const { return v[(y * w + x) * c + ch]; }
};

// Deliberate mistakes the converter could make; a test shows that each would be caught.
struct Flaws {
  bool extra_pad_at_start = false;  // PyTorch/Caffe style instead of TensorFlow's
  bool average_includes_pad = false;
};

std::pair<int64_t, int64_t> pair_of(const json& v) {
  if (v.is_number()) return {v.get<int64_t>(), v.get<int64_t>()};
  return {v[0].get<int64_t>(), v[1].get<int64_t>()};
}

// Output size and leading padding along one axis.
std::pair<int64_t, int64_t> geometry(int64_t in, int64_t k_eff, int64_t s, bool same,
                                     const Flaws& f) {
  if (!same) return {(in - k_eff) / s + 1, 0};
  const int64_t out = (in + s - 1) / s;
  const int64_t total = std::max<int64_t>((out - 1) * s + k_eff - in, 0);
  return {out, f.extra_pad_at_start ? total - total / 2 : total / 2};
}

const std::vector<float>& w_of(const KerasModel& m, const std::string& name) {
  return m.weights.at(name).data;
}

std::map<std::string, Image> naive_forward(const KerasModel& m, const Image& input,
                                           const std::vector<std::string>& outputs,
                                           const Flaws& flaws = {}) {
  std::map<std::string, Image> vals;
  auto done = [&] {
    for (const auto& o : outputs)
      if (!vals.count(o)) return false;
    return true;
  };
  for (const json& l : m.layers) {
    if (done()) break;
    const std::string name = l["name"], cls = l["class_name"];
    const json& c = l["config"];
    std::vector<const Image*> ins;
    if (!l["inbound_nodes"].empty())
      for (const json& i : l["inbound_nodes"][0]) ins.push_back(&vals.at(i[0].get<std::string>()));
    auto opt = [&](const char* key, const json& def) {
      return c.contains(key) && !c[key].is_null() ? c[key] : def;
    };
    Image y;
    if (cls == "InputLayer") {
      y = input;
    } else if (cls == "Conv2D" || cls == "DepthwiseConv2D") {
      const Image& x = *ins[0];
      const bool dw = cls == "DepthwiseConv2D";
      const auto [kh, kw] = pair_of(c["kernel_size"]);
      const auto [sh, sw] = pair_of(c["strides"]);
      const auto [dh, dwl] = pair_of(opt("dilation_rate", 1));
      const bool same = c["padding"] == "same";
      const auto [oh, pt] = geometry(x.h, (kh - 1) * dh + 1, sh, same, flaws);
      const auto [ow, pl] = geometry(x.w, (kw - 1) * dwl + 1, sw, same, flaws);
      const int64_t mult = dw ? opt("depth_multiplier", 1).get<int64_t>() : 0;
      const int64_t cout = dw ? x.c * mult : c["filters"].get<int64_t>();
      const auto& k = w_of(m, name + (dw ? "/depthwise_kernel" : "/kernel"));
      const bool bias = opt("use_bias", true).get<bool>();
      y = Image(oh, ow, cout);
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox)
          for (int64_t o = 0; o < cout; ++o) {
            double s = bias ? w_of(m, name + "/bias")[o] : 0.0;
            for (int64_t ky = 0; ky < kh; ++ky)
              for (int64_t kx = 0; kx < kw; ++kx) {
                const int64_t iy = oy * sh - pt + ky * dh, ix = ox * sw - pl + kx * dwl;
                if (iy < 0 || iy >= x.h || ix < 0 || ix >= x.w) continue;
                if (dw) {
                  const int64_t ci = o / mult, mm = o % mult;
                  s += x.at(iy, ix, ci) * k[((ky * kw + kx) * x.c + ci) * mult + mm];
                } else {
                  for (int64_t ci = 0; ci < x.c; ++ci)
                    s += x.at(iy, ix, ci) * k[((ky * kw + kx) * x.c + ci) * cout + o];
                }
              }
            if (opt("activation", "linear") == "relu") s = std::max(s, 0.0);
            y.at(oy, ox, o) = s;
          }
    } else if (cls == "BatchNormalization") {
      y = *ins[0];
      const double eps = c["epsilon"];
      for (int64_t i = 0; i < static_cast<int64_t>(y.v.size()); ++i) {
        const int64_t ch = i % y.c;
        const double g = opt("scale", true).get<bool>() ? w_of(m, name + "/gamma")[ch] : 1.0;
        const double b = opt("center", true).get<bool>() ? w_of(m, name + "/beta")[ch] : 0.0;
        y.v[i] = (y.v[i] - w_of(m, name + "/moving_mean")[ch]) /
                     std::sqrt(w_of(m, name + "/moving_variance")[ch] + eps) * g +
                 b;
      }
    } else if (cls == "ReLU" || cls == "Activation") {
      y = *ins[0];
      if (cls == "Activation" && c["activation"] == "linear") {
      } else {
        const double mx =
            cls == "ReLU" && !c["max_value"].is_null() ? c["max_value"].get<double>() : INFINITY;
        for (double& v : y.v) v = std::min(std::max(v, 0.0), mx);
      }
    } else if (cls == "Add") {
      y = *ins[0];
      for (size_t i = 1; i < ins.size(); ++i)
        for (size_t j = 0; j < y.v.size(); ++j) y.v[j] += ins[i]->v[j];
    } else if (cls == "Concatenate") {
      int64_t total = 0;
      for (const Image* i : ins) total += i->c;
      y = Image(ins[0]->h, ins[0]->w, total);
      for (int64_t yy = 0; yy < y.h; ++yy)
        for (int64_t xx = 0; xx < y.w; ++xx) {
          int64_t at = 0;
          for (const Image* i : ins)
            for (int64_t ch = 0; ch < i->c; ++ch) y.at(yy, xx, at++) = i->at(yy, xx, ch);
        }
    } else if (cls == "ZeroPadding2D") {
      const Image& x = *ins[0];
      const json& p = c["padding"];
      const int64_t t = p[0][0], b = p[0][1], lft = p[1][0], r = p[1][1];
      y = Image(x.h + t + b, x.w + lft + r, x.c);
      for (int64_t yy = 0; yy < x.h; ++yy)
        for (int64_t xx = 0; xx < x.w; ++xx)
          for (int64_t ch = 0; ch < x.c; ++ch) y.at(yy + t, xx + lft, ch) = x.at(yy, xx, ch);
    } else if (cls == "MaxPooling2D" || cls == "AveragePooling2D") {
      const Image& x = *ins[0];
      const bool mx = cls == "MaxPooling2D";
      const auto [kh, kw] = pair_of(c["pool_size"]);
      const auto [sh, sw] = pair_of(opt("strides", c["pool_size"]));
      const bool same = c["padding"] == "same";
      const auto [oh, pt] = geometry(x.h, kh, sh, same, flaws);
      const auto [ow, pl] = geometry(x.w, kw, sw, same, flaws);
      y = Image(oh, ow, x.c);
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox)
          for (int64_t ch = 0; ch < x.c; ++ch) {
            double best = -INFINITY, sum = 0.0;
            int64_t count = 0;
            for (int64_t ky = 0; ky < kh; ++ky)
              for (int64_t kx = 0; kx < kw; ++kx) {
                const int64_t iy = oy * sh - pt + ky, ix = ox * sw - pl + kx;
                if (iy < 0 || iy >= x.h || ix < 0 || ix >= x.w) continue;
                best = std::max(best, x.at(iy, ix, ch));
                sum += x.at(iy, ix, ch);
                ++count;
              }
            if (flaws.average_includes_pad) count = kh * kw;
            y.at(oy, ox, ch) = mx ? best : sum / count;
          }
    } else {
      ADD_FAILURE() << "naive forward: unsupported " << cls;
      return {};
    }
    vals[name] = std::move(y);
  }
  return vals;
}

// ---------------------------------------------------------------------------------------------
// Helpers.

Tensor random_batch(int64_t n, int64_t c, int64_t h, int64_t w, uint32_t seed) {
  Tensor t({n, c, h, w});
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& v : t.data) v = u(rng);
  return t;
}

Image image_of(const Tensor& batch, int64_t index) {
  Image im(batch.dim(2), batch.dim(3), batch.dim(1));
  for (int64_t ch = 0; ch < im.c; ++ch)
    for (int64_t y = 0; y < im.h; ++y)
      for (int64_t x = 0; x < im.w; ++x)
        im.at(y, x, ch) = batch.data[((index * im.c + ch) * im.h + y) * im.w + x];
  return im;
}

// Relative L2 distance between one image of an NCHW tensor and an NHWC reference.
double rel_l2(const Tensor& got, int64_t index, const Image& want) {
  EXPECT_EQ(got.dim(1), want.c);
  EXPECT_EQ(got.dim(2), want.h);
  EXPECT_EQ(got.dim(3), want.w);
  if (got.dim(1) != want.c || got.dim(2) != want.h || got.dim(3) != want.w) return INFINITY;
  double num = 0.0, den = 0.0;
  for (int64_t ch = 0; ch < want.c; ++ch)
    for (int64_t y = 0; y < want.h; ++y)
      for (int64_t x = 0; x < want.w; ++x) {
        const double g = got.data[((index * want.c + ch) * want.h + y) * want.w + x];
        num += (g - want.at(y, x, ch)) * (g - want.at(y, x, ch));
        den += want.at(y, x, ch) * want.at(y, x, ch);
      }
  return std::sqrt(num / std::max(den, 1e-30));
}

constexpr BackboneEngine kEngines[] = {BackboneEngine::opencv, BackboneEngine::dnnl};

std::vector<Tensor> run_engine(BackboneEngine engine, const KerasModel& m, int64_t h, int64_t w,
                               const std::vector<std::string>& outputs, const Tensor& batch) {
  const auto onnx = keras_to_onnx(m, static_cast<int>(h), static_cast<int>(w), outputs);
  return make_backbone(onnx, outputs, 2, engine)->forward(batch);
}

// Converts, runs both engines and the plain forward on one random image and compares every
// output.
void expect_matches(const KerasModel& m, int64_t h, int64_t w,
                    const std::vector<std::string>& outputs, double tol = 1e-5) {
  const Tensor x = random_batch(1, 3, h, w, static_cast<uint32_t>(h * 1000 + w));
  const auto want = naive_forward(m, image_of(x, 0), outputs);
  for (BackboneEngine engine : kEngines) {
    const auto got = run_engine(engine, m, h, w, outputs, x);
    ASSERT_EQ(got.size(), outputs.size());
    for (size_t i = 0; i < outputs.size(); ++i) {
      ASSERT_EQ(got[i].dim(0), 1);
      EXPECT_LT(rel_l2(got[i], 0, want.at(outputs[i])), tol)
          << outputs[i] << " at " << h << "x" << w << " engine " << static_cast<int>(engine);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Synthetic models.

TEST(KerasOpenCv, StridedSameConvOnOddAndEvenSizes) {
  KerasBuilder b(3);
  b.conv("c3s2", "input_1", 5, 3, 3, 2, "same", true);
  b.conv("c4s1", "input_1", 4, 4, 4, 1, "same");  // even kernel: pads 1 before, 2 after
  b.conv("c5s2", "input_1", 4, 5, 3, 2, "same", true, "relu");
  b.conv("cval", "input_1", 6, 3, 3, 2, "valid", true);
  b.conv("cdil", "input_1", 3, 3, 3, 1, "same", false, "linear", 2);
  const std::vector<std::string> outs{"c3s2", "c4s1", "c5s2", "cval", "cdil"};
  for (auto [h, w] : {std::pair{9, 11}, {8, 10}, {7, 8}, {12, 13}}) {
    expect_matches(b.model(), h, w, outs);
  }
}

TEST(KerasOpenCv, DepthwiseZeroPaddingBatchNormAndRelu6) {
  KerasBuilder b(3);
  b.zero_pad("pad", "input_1", 0, 1, 0, 1);
  b.conv("conv1", "pad", 8, 3, 3, 2, "valid");
  b.bn("bn1", "conv1", /*scale=*/true);
  b.relu("relu1", "bn1", 6.0);
  b.depthwise("dw_same", "relu1", 3, 2, "same", 2);
  b.bn("bn_dw", "dw_same", /*scale=*/false);
  b.activation("act_dw", "bn_dw", "relu");
  b.depthwise("dw_valid", "act_dw", 3, 1, "valid");
  b.zero_pad("pad2", "dw_valid", 1, 2, 3, 0);
  b.activation("lin", "pad2", "linear");
  const std::vector<std::string> outs{"relu1", "act_dw", "lin"};
  for (auto [h, w] : {std::pair{16, 16}, {17, 19}}) expect_matches(b.model(), h, w, outs);
}

TEST(KerasOpenCv, BatchNormThatCannotBeFolded) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 6, 3, 3, 1, "same", true);
  b.bn("bn_a", "conv", true);  // the conv has two readers: no folding
  b.relu("relu", "conv", std::nullopt);
  b.add("sum", {"bn_a", "relu"});
  b.bn("bn_b", "sum", false, false);  // after an Add
  b.concat("cat", {"bn_b", "conv", "relu"});
  b.bn("bn_c", "cat", true, true);
  // "conv" is an output too, so even a single reader could not have absorbed it.
  expect_matches(b.model(), 10, 9, {"conv", "bn_c", "sum"});
}

TEST(KerasOpenCv, PoolingAtTheBorder) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 4, 1, 1, 1, "valid", true);
  b.pool("AveragePooling2D", "avg3s1", "conv", 3, 1, "same");
  b.pool("AveragePooling2D", "avg3s2", "conv", 3, 2, "same");
  b.pool("AveragePooling2D", "avg2s2", "conv", 2, 2, "same");
  b.pool("AveragePooling2D", "avg_valid", "conv", 3, 2, "valid");
  b.pool("MaxPooling2D", "max3s2", "conv", 3, 2, "same");
  b.pool("MaxPooling2D", "max2s2", "conv", 2, 2, "same");
  b.pool("MaxPooling2D", "max_valid", "conv", 3, 2, "valid");
  const std::vector<std::string> outs{"avg3s1", "avg3s2", "avg2s2",   "avg_valid",
                                      "max3s2", "max2s2", "max_valid"};
  for (auto [h, w] : {std::pair{7, 7}, {8, 6}, {5, 9}}) expect_matches(b.model(), h, w, outs);

  // Strongly negative values: a max pool that let the padding in would return zeros there.
  KerasBuilder neg(3);
  neg.conv("conv", "input_1", 3, 1, 1, 1, "valid", true);
  neg.pool("MaxPooling2D", "max", "conv", 3, 2, "same");
  KerasModel m = neg.model();
  for (float& v : m.weights.at("conv/bias").data) v = -20.0f;
  expect_matches(m, 8, 8, {"max"});
}

// The comparison is sharp enough to see the two classic conversion mistakes.
TEST(KerasOpenCv, ReferenceDetectsWrongPaddingSideAndAverageBorder) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 4, 3, 3, 2, "same", true);
  b.pool("AveragePooling2D", "avg", "conv", 3, 1, "same");
  const KerasModel m = b.model();
  const Tensor x = random_batch(1, 3, 10, 10, 7);
  const auto got = run_engine(BackboneEngine::opencv, m, 10, 10, {"conv", "avg"}, x);
  const Image in = image_of(x, 0);
  EXPECT_LT(rel_l2(got[0], 0, naive_forward(m, in, {"conv"}).at("conv")), 1e-5);
  EXPECT_LT(rel_l2(got[1], 0, naive_forward(m, in, {"avg"}).at("avg")), 1e-5);
  Flaws wrong_side;
  wrong_side.extra_pad_at_start = true;
  EXPECT_GT(rel_l2(got[0], 0, naive_forward(m, in, {"conv"}, wrong_side).at("conv")), 1e-2);
  Flaws include_pad;
  include_pad.average_includes_pad = true;
  EXPECT_GT(rel_l2(got[1], 0, naive_forward(m, in, {"avg"}, include_pad).at("avg")), 1e-2);
}

TEST(KerasOpenCv, LoadedFromDiskLikeTheDumpScriptWritesIt) {
  KerasBuilder b(3, 5);
  b.conv("conv", "input_1", 4, 3, 3, 2, "same");
  b.bn("bn", "conv", false);
  b.activation("relu", "bn", "relu");
  testing::TempDir dir;
  b.write(dir.path());
  const KerasModel loaded = load_keras_model(dir.path());
  expect_matches(loaded, 11, 12, {"relu"});
}

TEST(Backbone, BatchEqualsSingleImagesInBothEngines) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 6, 3, 3, 2, "same", true);
  b.pool("AveragePooling2D", "avg", "conv", 3, 1, "same");
  b.depthwise("dw", "avg", 3, 2, "same");
  const std::vector<std::string> outs{"avg", "dw"};
  const auto onnx = keras_to_onnx(b.model(), 13, 12, outs);
  for (BackboneEngine engine : kEngines) {
    auto backbone = make_backbone(onnx, outs, 1, engine);
    EXPECT_EQ(backbone->layers(), outs);
    const Tensor batch = random_batch(3, 3, 13, 12, 11);
    const auto together = backbone->forward(batch);
    ASSERT_EQ(together.size(), 2u);
    EXPECT_EQ(together[0].shape, (std::vector<int64_t>{3, 6, 7, 6}));
    EXPECT_EQ(together[1].shape, (std::vector<int64_t>{3, 6, 4, 3}));
    const int64_t per = 3 * 13 * 12;
    for (int64_t i = 0; i < 3; ++i) {
      Tensor one({1, 3, 13, 12});
      std::copy(batch.data.begin() + i * per, batch.data.begin() + (i + 1) * per, one.data.begin());
      const auto single = backbone->forward(one);
      for (size_t k = 0; k < 2; ++k) {
        const int64_t n = single[k].numel();
        EXPECT_TRUE(std::equal(single[k].data.begin(), single[k].data.end(),
                               together[k].data.begin() + i * n))
            << "image " << i << " layer " << outs[k] << " engine " << backbone->engine();
      }
    }
  }
}

TEST(Backbone, BothEnginesRejectBadGraphsAndInputs) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 2, 3, 3, 1, "same");
  const auto onnx = keras_to_onnx(b.model(), 8, 8, {"conv"});
  for (BackboneEngine engine : kEngines) {
    try {
      make_backbone(onnx, {"nope"}, 1, engine);
      FAIL() << "a missing layer was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::bad_input);
      EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos) << e.what();
    }
    const std::vector<uint8_t> garbage{1, 2, 3, 4, 5, 6, 7, 8};
    EXPECT_THROW(make_backbone(garbage, {"conv"}, 1, engine), Error);
    auto backbone = make_backbone(onnx, {"conv"}, 1, engine);
    EXPECT_THROW(backbone->forward(random_batch(1, 3, 9, 8, 1)), Error);  // built for 8 x 8
    EXPECT_EQ(backbone->forward(random_batch(2, 3, 8, 8, 1))[0].shape,
              (std::vector<int64_t>{2, 2, 8, 8}));
  }
}

// ---------------------------------------------------------------------------------------------
// The oneDNN engine's own paths.

// Convolutions oneDNN runs by different kernels: 3 x 3 of stride 1 by Winograd (on AVX-512;
// its blocked maps reordered around it), 1 x 1, strided, asymmetric and even kernels directly,
// on large and small maps: every one against the plain forward.
TEST(DnnlBackbone, ConvolutionKernelsMatchThePlainForward) {
  KerasBuilder b(3, 4);
  b.conv("a", "input_1", 16, 3, 3, 1, "same", true, "relu");  // 3 channels in
  b.conv("b", "a", 64, 3, 3, 1, "same", true);                // Winograd
  b.conv("c", "b", 8, 1, 1, 1, "valid", true);                // 1 x 1 on 64 channels
  b.conv("d", "a", 40, 5, 5, 2, "valid");                     // strided, 40 channels
  b.conv("e", "a", 96, 1, 3, 1, "same", false, "relu");       // asymmetric kernel, fused relu
  b.conv("f", "a", 24, 4, 3, 1, "same", true);                // even kernel: uneven pads
  b.conv("g", "b", 24, 3, 3, 1, "valid", true, "relu");       // Winograd, valid, fused relu
  const std::vector<std::string> outs{"b", "c", "d", "e", "f", "g"};
  for (auto [h, w] : {std::pair{100, 97}, {48, 50}, {13, 12}})
    expect_matches(b.model(), h, w, outs);
}

// The same input on 1, 2 and 3 threads (plans of their own): the same features to float
// rounding, whatever way oneDNN shares the work out.
TEST(DnnlBackbone, ThreadCountsAgree) {
  KerasBuilder b(3, 5);
  b.conv("a", "input_1", 16, 3, 3, 2, "same", true, "relu");
  b.conv("b", "a", 64, 3, 3, 1, "same", true);
  b.pool("AveragePooling2D", "avg", "b", 3, 1, "same");
  b.conv("c", "avg", 48, 1, 1, 1, "valid", true, "relu");
  const std::vector<std::string> outs{"b", "c"};
  const auto onnx = keras_to_onnx(b.model(), 120, 90, outs);
  const Tensor x = random_batch(2, 3, 120, 90, 8);
  const auto one = make_backbone(onnx, outs, 1, BackboneEngine::dnnl)->forward(x);
  for (int threads : {2, 3}) {
    const auto got = make_backbone(onnx, outs, threads, BackboneEngine::dnnl)->forward(x);
    for (size_t k = 0; k < outs.size(); ++k) {
      ASSERT_EQ(got[k].shape, one[k].shape);
      for (int64_t i = 0; i < got[k].numel(); ++i) {
        ASSERT_NEAR(got[k].data[i], one[k].data[i], 1e-5 * (1 + std::abs(one[k].data[i])))
            << outs[k] << " with " << threads << " threads at " << i;
      }
    }
  }
}

// A copy of the graph with one node's operator renamed.
std::vector<uint8_t> with_operator(const std::vector<uint8_t>& bytes, const std::string& output,
                                   const std::string& op) {
  onnx::ModelProto model;
  EXPECT_TRUE(model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
  bool found = false;
  for (auto& n : *model.mutable_graph()->mutable_node()) {
    if (n.output(0) == output) {
      n.set_op_type(op);
      found = true;
    }
  }
  EXPECT_TRUE(found) << output;
  std::string out;
  model.SerializeToString(&out);
  return {out.begin(), out.end()};
}

// The converter multiplies by a [1, C, h, w] constant; ONNX files may hold a per-channel
// [1, C, 1, 1] or a scalar one instead.
TEST(DnnlBackbone, MulBroadcastsScalarsAndChannelsByTheirDimensions) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 4, 1, 1, 1, "valid", true);
  b.pool("AveragePooling2D", "avg", "conv", 3, 1, "same");        // padded mean, then Mul
  const std::vector<std::string> outs{"avg/padded_mean", "avg"};  // before and after the Mul
  const auto onnx = keras_to_onnx(b.model(), 7, 6, {"avg"});
  const Tensor x = random_batch(1, 3, 7, 6, 4);
  struct Case {
    std::vector<int64_t> dims;
    std::vector<float> values;
  };
  for (const Case& c : {Case{{1, 4, 1, 1}, {1.5f, -2.0f, 3.0f, 0.25f}}, Case{{1}, {-3.0f}}}) {
    onnx::ModelProto model;
    ASSERT_TRUE(model.ParseFromArray(onnx.data(), static_cast<int>(onnx.size())));
    bool found = false;
    for (auto& t : *model.mutable_graph()->mutable_initializer()) {
      if (t.name() != "avg/correction") continue;
      t.clear_dims();
      for (int64_t d : c.dims) t.add_dims(d);
      t.set_raw_data(c.values.data(), c.values.size() * sizeof(float));
      found = true;
    }
    ASSERT_TRUE(found);
    std::string bytes;
    model.SerializeToString(&bytes);
    const auto out =
        make_dnnl_backbone({bytes.begin(), bytes.end()}, outs, 2, Precision::fp32)->forward(x);
    const int64_t plane = out[0].dim(2) * out[0].dim(3);
    for (int64_t i = 0; i < out[0].numel(); ++i) {
      const float scale = c.values.size() == 1 ? c.values[0] : c.values[i / plane];
      ASSERT_EQ(out[1].data[i], out[0].data[i] * scale) << i;
    }
  }
}

TEST(DnnlBackbone, OperatorsItLacksFallBackToOpenCvOrAreNamed) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 4, 3, 3, 1, "same", true);
  b.relu("act", "conv", std::nullopt);
  b.conv("head", "act", 2, 1, 1, 1, "valid");
  b.relu("head_act", "head", std::nullopt);
  const auto onnx = keras_to_onnx(b.model(), 9, 9, {"act", "head_act"});
  EXPECT_EQ(make_backbone(onnx, {"act"}, 1, BackboneEngine::automatic)->engine(), "dnnl");

  // Sigmoid, which OpenCV runs and the oneDNN engine does not: auto falls back and says why.
  const auto sigmoid = with_operator(onnx, "act", "Sigmoid");
  auto fallback = make_backbone(sigmoid, {"act"}, 1, BackboneEngine::automatic);
  EXPECT_EQ(fallback->engine(), "opencv");
  ASSERT_EQ(fallback->notes().size(), 1u);
  EXPECT_NE(fallback->notes()[0].find("Sigmoid"), std::string::npos) << fallback->notes()[0];
  const Tensor x = random_batch(1, 3, 9, 9, 2);
  const Tensor conv = make_backbone(onnx, {"conv"}, 1, BackboneEngine::dnnl)->forward(x)[0];
  const Tensor act = fallback->forward(x)[0];
  ASSERT_EQ(act.numel(), conv.numel());
  for (int64_t i = 0; i < act.numel(); ++i) {
    ASSERT_NEAR(act.data[i], 1.0 / (1.0 + std::exp(-conv.data[i])), 1e-5) << i;
  }
  try {
    make_backbone(sigmoid, {"act"}, 1, BackboneEngine::dnnl);
    FAIL() << "the oneDNN engine accepted an operator it lacks";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input);
    EXPECT_NE(std::string(e.what()).find("Sigmoid"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'act'"), std::string::npos) << e.what();
  }
  // Depthwise convolutions run in oneDNN.
  KerasBuilder dw(3);
  dw.depthwise("dw", "input_1", 3, 1, "same");
  const auto dw_onnx = keras_to_onnx(dw.model(), 9, 9, {"dw"});
  EXPECT_EQ(make_backbone(dw_onnx, {"dw"}, 1, BackboneEngine::automatic)->engine(), "dnnl");
  // Past the requested layers an operator does not matter.
  const auto late = with_operator(onnx, "head_act", "Sigmoid");
  EXPECT_EQ(make_backbone(late, {"act"}, 1, BackboneEngine::automatic)->engine(), "dnnl");
  EXPECT_EQ(make_backbone(late, {"act"}, 1, BackboneEngine::dnnl)->forward(x)[0].data,
            make_backbone(onnx, {"act"}, 1, BackboneEngine::dnnl)->forward(x)[0].data);
}

// ---------------------------------------------------------------------------------------------
// The oneDNN engine's bf16 path and its fallback. fp32 is checked with the other engines above.

// bf16 keeps 8 significant bits: each rounding of a weight or an activation is off by up to
// 2^-9 = 0.2 %, and such errors add up over the layers roughly as a random walk. The bound is
// on the relative L2 distance to the plain fp32 forward, for the few-layer graphs here and the
// first blocks of the real backbones (measured 0.2-0.3 % on the synthetic graph, 0.4-0.5 % on
// InceptionV3's, 0.9-1.6 % on MobileNetV2's, whose depthwise sums cancel more; an fp32 run is
// at 1e-6, and the one bf16 bug found so far, an average pool's border correction multiplied
// in the wrong layout, at 4-9 %).
constexpr double kBf16Bound = 0.02;

void expect_bf16_matches(const KerasModel& m, int64_t h, int64_t w,
                         const std::vector<std::string>& outputs) {
  const Tensor x = random_batch(1, 3, h, w, static_cast<uint32_t>(h * 1000 + w));
  const auto want = naive_forward(m, image_of(x, 0), outputs);
  const auto onnx = keras_to_onnx(m, static_cast<int>(h), static_cast<int>(w), outputs);
  const auto net = make_backbone(onnx, outputs, 2, BackboneEngine::dnnl, Precision::bf16);
  ASSERT_EQ(net->precision(), "bf16");
  EXPECT_TRUE(net->notes().empty());
  const auto got = net->forward(x);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const double err = rel_l2(got[i], 0, want.at(outputs[i]));
    EXPECT_LT(err, kBf16Bound) << outputs[i] << " at " << h << "x" << w;
    EXPECT_GT(err, 1e-5) << outputs[i] << ": as exact as fp32, so not run in bf16";
  }
}

#define SKIP_WITHOUT_BF16()                                                          \
  if (!dnnl_has_bf16()) {                                                            \
    GTEST_SKIP() << "bf16 not tested: oneDNN has no bf16 kernels for this CPU (its " \
                 << "instruction set: " << dnnl_isa_name() << ")";                   \
  }

// Every operator the converters emit: strided, dilated, asymmetric and depthwise convolutions,
// zero pads, batch norms folded and not, ReLU6, both pools, Add, Concat, Mul by a constant.
TEST(DnnlBackbone, Bf16OnEveryOperatorWithinItsBound) {
  SKIP_WITHOUT_BF16();
  KerasBuilder b(3, 9);
  b.zero_pad("pad", "input_1", 0, 1, 0, 1);
  b.conv("conv1", "pad", 16, 3, 3, 2, "valid");
  b.bn("bn1", "conv1", true);
  b.relu("relu1", "bn1", 6.0);
  b.depthwise("dw", "relu1", 3, 1, "same");
  b.bn("bn_dw", "dw", false);
  b.activation("act_dw", "bn_dw", "relu");
  b.conv("c3", "act_dw", 16, 3, 3, 1, "same", true, "relu");
  b.conv("cdil", "act_dw", 16, 3, 3, 1, "same", false, "linear", 2);
  b.conv("c13", "act_dw", 16, 1, 3, 1, "same", true);
  b.add("sum", {"c3", "cdil", "c13"});
  b.bn("bn_sum", "sum", true, true);
  b.pool("AveragePooling2D", "avg", "bn_sum", 3, 1, "same");
  b.pool("MaxPooling2D", "max", "bn_sum", 3, 2, "same");
  b.conv("c_after_max", "max", 24, 1, 1, 1, "valid", true, "relu");
  b.concat("cat", {"avg", "act_dw"});
  const std::vector<std::string> outs{"relu1", "sum", "bn_sum", "avg", "cat", "c_after_max"};
  for (auto [h, w] : {std::pair{33, 31}, {40, 40}}) expect_bf16_matches(b.model(), h, w, outs);
}

// As on a CPU without AVX-512 BF16 (oneDNN limited to AVX2, as DNNL_MAX_CPU_ISA=AVX2 does):
// bf16 asked for runs fp32, exactly, and says so; auto takes fp32 silently. oneDNN's limit
// can only be set before its first kernel, so this runs in a process of its own (ctest runs
// each test alone); run with others it skips.
TEST(DnnlBackbone, Bf16FallsBackToFp32WhereTheCpuLacksIt) {
  if (dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx2) != dnnl::status::success) {
    GTEST_SKIP() << "oneDNN already ran a kernel in this process: run this test alone";
  }
  ASSERT_FALSE(dnnl_has_bf16());
  KerasBuilder b(3);
  b.conv("conv", "input_1", 8, 3, 3, 2, "same", true, "relu");
  b.depthwise("dw", "conv", 3, 1, "same");
  const std::vector<std::string> outs{"conv", "dw"};
  const auto onnx = keras_to_onnx(b.model(), 17, 15, outs);
  const Tensor x = random_batch(1, 3, 17, 15, 5);
  const auto want = naive_forward(b.model(), image_of(x, 0), outs);
  const auto asked = make_backbone(onnx, outs, 2, BackboneEngine::dnnl, Precision::bf16);
  EXPECT_EQ(asked->engine(), "dnnl");
  EXPECT_EQ(asked->precision(), "fp32");
  ASSERT_EQ(asked->notes().size(), 1u);
  EXPECT_NE(asked->notes()[0].find("avx2"), std::string::npos) << asked->notes()[0];
  const auto got = asked->forward(x);
  for (size_t i = 0; i < outs.size(); ++i) EXPECT_LT(rel_l2(got[i], 0, want.at(outs[i])), 1e-5);
  const auto automatic =
      make_backbone(onnx, outs, 2, BackboneEngine::automatic, Precision::automatic);
  EXPECT_EQ(automatic->engine(), "dnnl");
  EXPECT_EQ(automatic->precision(), "fp32");
  EXPECT_TRUE(automatic->notes().empty());
}

TEST(DnnlBackbone, OpenCvRunsFp32AndSaysSo) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 4, 3, 3, 1, "same");
  const auto onnx = keras_to_onnx(b.model(), 8, 8, {"conv"});
  const auto net = make_backbone(onnx, {"conv"}, 1, BackboneEngine::opencv, Precision::bf16);
  EXPECT_EQ(net->precision(), "fp32");
  ASSERT_EQ(net->notes().size(), 1u);
  EXPECT_NE(net->notes()[0].find("fp32 only"), std::string::npos) << net->notes()[0];
  EXPECT_TRUE(make_backbone(onnx, {"conv"}, 1, BackboneEngine::opencv, Precision::automatic)
                  ->notes()
                  .empty());
  EXPECT_EQ(precision_from_string("bf16"), Precision::bf16);
  EXPECT_EQ(precision_from_string("auto"), Precision::automatic);
  EXPECT_THROW(precision_from_string("fp16"), Error);
  EXPECT_EQ(engine_from_string("dnnl"), BackboneEngine::dnnl);
}

// ---------------------------------------------------------------------------------------------
// Names, folders and identities.

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(Backbone, BuiltinDescriptions) {
  const auto inception = builtin_backbone("inception_v3");
  ASSERT_TRUE(inception);
  EXPECT_EQ(inception->default_layers, (std::vector<std::string>{"mixed2", "mixed5"}));
  EXPECT_EQ(inception->default_image_size, 299);
  EXPECT_EQ(inception->normalization, Normalization::m11);
  EXPECT_TRUE(inception->builtin);
  const auto mobilenet = builtin_backbone("mobilenet_v2");
  ASSERT_TRUE(mobilenet);
  EXPECT_EQ(mobilenet->default_layers,
            (std::vector<std::string>{"block_5_expand_relu", "block_10_expand_relu"}));
  EXPECT_EQ(mobilenet->default_image_size, 224);
  EXPECT_FALSE(builtin_backbone("wide_resnet50_2"));
}

TEST(Backbone, DirectoryFromEnvironmentOrBesideTheExecutable) {
  {
    ScopedEnv env("PATCHCORE_BACKBONES", "/somewhere/else");
    EXPECT_EQ(backbone_dir(), fs::path("/somewhere/else"));
  }
  ScopedEnv env("PATCHCORE_BACKBONES", "");
  const fs::path exe_dir = fs::read_symlink("/proc/self/exe").parent_path();
  if (fs::is_directory(exe_dir / "backbones")) {
    EXPECT_EQ(backbone_dir(), exe_dir / "backbones");
  } else {
    EXPECT_EQ(backbone_dir(), exe_dir.parent_path() / "share" / "patchcore" / "backbones");
  }
}

TEST(Backbone, MissingBuiltinFolderSaysToRunSetup) {
  testing::TempDir empty;
  ScopedEnv env("PATCHCORE_BACKBONES", empty.path().string());
  try {
    build_backbone_graph("inception_v3", {}, 299);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input);
    EXPECT_NE(std::string(e.what()).find("scripts/setup"), std::string::npos) << e.what();
  }
}

TEST(Backbone, OnnxFilesAndUnknownNames) {
  KerasBuilder b(3);
  b.conv("conv", "input_1", 2, 3, 3, 1, "same");
  const auto onnx = keras_to_onnx(b.model(), 8, 8, {"conv"});
  testing::TempDir dir;
  const fs::path file = dir / "net.onnx";
  testing::write_bytes(file, std::string(onnx.begin(), onnx.end()));
  const BackboneGraph g = build_backbone_graph(file.string(), {"conv"}, 224);
  EXPECT_EQ(g.onnx, onnx);
  EXPECT_EQ(g.identity, "onnx:sha256:" + sha256_hex(onnx.data(), onnx.size()));
  EXPECT_EQ(g.identity.size(), std::string("onnx:sha256:").size() + 64);
  EXPECT_THROW(build_backbone_graph(file.string(), {"missing_layer"}, 224), Error);
  EXPECT_THROW(build_backbone_graph((dir / "absent.onnx").string(), {"conv"}, 224), Error);
  testing::write_bytes(dir / "junk.onnx", "not a protobuf at all");
  EXPECT_THROW(build_backbone_graph((dir / "junk.onnx").string(), {"conv"}, 224), Error);
  try {
    build_backbone_graph("resnet_9000", {}, 224);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input);
    EXPECT_NE(std::string(e.what()).find("resnet_9000"), std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------------
// The real built-in backbones (after scripts/setup).

class RealBackbone : public ::testing::Test {
 protected:
  static const KerasModel& model(const std::string& name) {
    static std::map<std::string, KerasModel> cache;
    auto it = cache.find(name);
    if (it == cache.end()) {
      it = cache.emplace(name, load_keras_model(testing::built_backbones_dir() / name)).first;
    }
    return it->second;
  }
  void require(const std::string& name) {
    const fs::path dir = testing::built_backbones_dir();
    if (dir.empty() || !fs::is_regular_file(dir / name / "model.json")) {
      GTEST_SKIP() << "build/backbones/" << name << " absent (run scripts/setup)";
    }
  }
};

TEST_F(RealBackbone, InceptionV3FirstBlockMatchesPlainForward) {
  require("inception_v3");
  if (IsSkipped()) return;
  // 75 x 75 is InceptionV3's smallest input; mixed0 is then 7 x 7, all border.
  expect_matches(model("inception_v3"), 75, 75,
                 {"activation_3", "max_pooling2d_1", "activation_5", "mixed0"});
}

TEST_F(RealBackbone, MobileNetV2FirstBlocksMatchPlainForward) {
  require("mobilenet_v2");
  if (IsSkipped()) return;
  for (int s : {64, 63}) {
    expect_matches(model("mobilenet_v2"), s, s,
                   {"Conv1_relu", "block_1_expand_relu", "block_2_add", "block_3_depthwise_relu"});
  }
}

TEST_F(RealBackbone, DefaultLayerShapesAndBatches) {
  require("inception_v3");
  require("mobilenet_v2");
  if (IsSkipped()) return;
  ScopedEnv env("PATCHCORE_BACKBONES", testing::built_backbones_dir().string());
  struct Case {
    std::string name;
    int size;
    std::vector<std::vector<int64_t>> shapes;  // of one image
  };
  const std::vector<Case> cases = {
      {"inception_v3", 299, {{288, 35, 35}, {768, 17, 17}}},
      {"inception_v3", 160, {{288, 17, 17}, {768, 8, 8}}},
      {"mobilenet_v2", 224, {{192, 28, 28}, {384, 14, 14}}},
      {"mobilenet_v2", 100, {{192, 12, 12}, {384, 6, 6}}},  // fixed (0, 1) pads
  };
  for (const Case& c : cases) {
    const BackboneGraph g = build_backbone_graph(c.name, {}, c.size);
    const std::string hash = model(c.name).weights_sha256;
    EXPECT_EQ(g.identity, "keras:" + c.name + ":sha256:" + hash);
    auto backbone = make_opencv_backbone(g.onnx, builtin_backbone(c.name)->default_layers, 2);
    const int n = c.size < 200 ? 3 : 1;
    const Tensor batch = random_batch(n, 3, c.size, c.size, 3);
    const auto out = backbone->forward(batch);
    ASSERT_EQ(out.size(), 2u);
    for (size_t k = 0; k < 2; ++k) {
      const auto& s = c.shapes[k];
      EXPECT_EQ(out[k].shape, (std::vector<int64_t>{n, s[0], s[1], s[2]}))
          << c.name << " at " << c.size;
    }
    if (n > 1) {  // the batch equals one image at a time
      const int64_t per = 3LL * c.size * c.size;
      Tensor last({1, 3, c.size, c.size});
      std::copy(batch.data.end() - per, batch.data.end(), last.data.begin());
      const auto single = backbone->forward(last);
      for (size_t k = 0; k < 2; ++k) {
        EXPECT_TRUE(std::equal(single[k].data.begin(), single[k].data.end(),
                               out[k].data.end() - single[k].numel()));
      }
    }
  }
}

// The bar for another engine: outputs equal to OpenCV's to 1e-5 (of the layer's largest value)
// at the default layers and sizes.
TEST_F(RealBackbone, DnnlEngineEqualsOpenCvAtTheDefaultLayers) {
  require("inception_v3");
  require("mobilenet_v2");
  if (IsSkipped()) return;
  ScopedEnv env("PATCHCORE_BACKBONES", testing::built_backbones_dir().string());
  for (auto [name, size] :
       {std::pair<std::string, int>{"inception_v3", 299}, {"mobilenet_v2", 224}}) {
    const BackboneGraph g = build_backbone_graph(name, {}, size);
    const auto layers = builtin_backbone(name)->default_layers;
    const Tensor x = random_batch(1, 3, size, size, 21);
    const auto want = make_backbone(g.onnx, layers, 2, BackboneEngine::opencv)->forward(x);
    const auto got = make_backbone(g.onnx, layers, 2, BackboneEngine::dnnl)->forward(x);
    for (size_t k = 0; k < layers.size(); ++k) {
      ASSERT_EQ(got[k].shape, want[k].shape);
      double max_diff = 0, max_abs = 0;
      for (int64_t i = 0; i < got[k].numel(); ++i) {
        max_diff = std::max(max_diff, std::abs(double{got[k].data[i]} - want[k].data[i]));
        max_abs = std::max(max_abs, std::abs(double{want[k].data[i]}));
      }
      EXPECT_GT(max_abs, 0.0);
      EXPECT_LE(max_diff, 1e-5 * max_abs) << name << " " << layers[k];
    }
  }
}

TEST_F(RealBackbone, UnknownLayerAndTooSmallInput) {
  require("mobilenet_v2");
  if (IsSkipped()) return;
  ScopedEnv env("PATCHCORE_BACKBONES", testing::built_backbones_dir().string());
  try {
    build_backbone_graph("mobilenet_v2", {"block_5_expand_relu", "block_99"}, 224);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input);
    EXPECT_NE(std::string(e.what()).find("block_99"), std::string::npos) << e.what();
  }
  // The classifier head is not convertible, and asking for it must say so.
  try {
    build_backbone_graph("mobilenet_v2", {"dense_3"}, 224);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported"), std::string::npos) << e.what();
  }
}

TEST_F(RealBackbone, Bf16FirstBlocksWithinTheBound) {
  require("inception_v3");
  require("mobilenet_v2");
  if (IsSkipped()) return;
  SKIP_WITHOUT_BF16();
  expect_bf16_matches(model("inception_v3"), 75, 75,
                      {"activation_3", "max_pooling2d_1", "activation_5", "mixed0"});
  expect_bf16_matches(model("mobilenet_v2"), 64, 64,
                      {"Conv1_relu", "expanded_conv_depthwise_relu", "expanded_conv_project_BN",
                       "block_1_expand_relu", "block_2_add", "block_3_depthwise_relu"});
}

}  // namespace
}  // namespace patchcore
