// Loading Keras backbone folders and the structure of the ONNX graphs made from them. The
// numerical checks (OpenCV running these graphs against a plain Keras forward pass) live in
// test_backbone.cpp, the first test that links OpenCV DNN.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cstring>
#include <limits>
#include <set>

#include "error.h"
#include "keras_onnx.h"
#include "sha256.h"
#include "test_support.h"

namespace patchcore {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

json layer(const std::string& cls, const std::string& name, json config,
           const std::vector<std::string>& inputs) {
  config["name"] = name;
  json inbound = json::array();
  for (const auto& i : inputs) inbound.push_back({i, 0, 0, json::object()});
  return {{"name", name},
          {"class_name", cls},
          {"config", config},
          {"inbound_nodes", inputs.empty() ? json::array() : json::array({inbound})}};
}

json input_layer() {
  return layer("InputLayer", "input_1", {{"batch_input_shape", {nullptr, 32, 32, 3}}}, {});
}

json conv_cfg(int64_t filters, int k, int stride, const std::string& padding) {
  return {{"filters", filters},
          {"kernel_size", {k, k}},
          {"strides", {stride, stride}},
          {"padding", padding},
          {"activation", "linear"},
          {"use_bias", false},
          {"data_format", "channels_last"}};
}

json pool_cfg(int k, int stride, const std::string& padding) {
  return {{"pool_size", {k, k}}, {"strides", {stride, stride}}, {"padding", padding}};
}

Tensor filled(std::vector<int64_t> shape, float start) {
  Tensor t(std::move(shape));
  for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = start + 0.01f * static_cast<float>(i % 37);
  return t;
}

// input -> conv (3x3 stride 2 'same', 4 filters) -> bn -> relu6
KerasModel small_model() {
  KerasModel m;
  m.layers =
      json::array({input_layer(), layer("Conv2D", "conv", conv_cfg(4, 3, 2, "same"), {"input_1"}),
                   layer("BatchNormalization", "bn",
                         {{"axis", 3}, {"epsilon", 1e-3}, {"scale", false}}, {"conv"}),
                   layer("ReLU", "relu", {{"max_value", 6}}, {"bn"})});
  m.weights["conv/kernel"] = filled({3, 3, 3, 4}, -0.1f);
  m.weights["bn/moving_mean"] = filled({4}, 0.1f);
  m.weights["bn/moving_variance"] = filled({4}, 0.9f);
  m.weights["bn/beta"] = filled({4}, 0.2f);
  return m;
}

onnx::ModelProto parse(const std::vector<uint8_t>& bytes) {
  onnx::ModelProto p;
  EXPECT_TRUE(p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
  return p;
}

std::vector<const onnx::NodeProto*> nodes_of(const onnx::ModelProto& p, const std::string& op) {
  std::vector<const onnx::NodeProto*> out;
  for (const auto& n : p.graph().node())
    if (n.op_type() == op) out.push_back(&n);
  return out;
}

std::vector<int64_t> ints_attr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return {a.ints().begin(), a.ints().end()};
  return {};
}

const onnx::AttributeProto* attr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}

const onnx::TensorProto* init_of(const onnx::ModelProto& p, const std::string& name) {
  for (const auto& t : p.graph().initializer())
    if (t.name() == name) return &t;
  return nullptr;
}

std::vector<float> floats_of(const onnx::TensorProto& t) {
  std::vector<float> v(t.raw_data().size() / 4);
  std::memcpy(v.data(), t.raw_data().data(), v.size() * 4);
  return v;
}

std::vector<int64_t> dims_of(const onnx::ValueInfoProto& v) {
  std::vector<int64_t> d;
  for (const auto& x : v.type().tensor_type().shape().dim()) d.push_back(x.dim_value());
  return d;
}

template <typename F>
void expect_bad_input(F&& f, const std::vector<std::string>& mentions) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input) << e.what();
    for (const auto& m : mentions)
      EXPECT_NE(std::string(e.what()).find(m), std::string::npos)
          << "'" << m << "' not in: " << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Loading.

void write_folder(const fs::path& dir, const json& topology_root, const json& table,
                  const std::vector<float>& floats) {
  testing::write_bytes(dir / "model.json",
                       json{{"modelTopology", topology_root}, {"weights", table}}.dump());
  testing::write_bytes(
      dir / "weights.bin",
      std::string(reinterpret_cast<const char*>(floats.data()), floats.size() * 4));
}

json nested(const json& layers) {
  return {{"keras_version", "2.2.4"},
          {"model_config", {{"class_name", "Model"}, {"config", {{"layers", layers}}}}}};
}

TEST(LoadKerasModel, ReadsWeightsByOffsetAndHashesTheFile) {
  testing::TempDir dir;
  const json layers = small_model().layers;
  std::vector<float> floats(3 * 3 * 3 * 4 + 3);
  for (size_t i = 0; i < floats.size(); ++i) floats[i] = 0.5f * static_cast<float>(i) - 7.0f;
  // The table order need not follow the file order.
  const json table =
      json::array({{{"name", "bn/moving_mean"}, {"shape", {3}}, {"offset", 108}},
                   {{"name", "conv/kernel"}, {"shape", {3, 3, 3, 4}}, {"offset", 0}}});
  write_folder(dir.path(), nested(layers), table, floats);
  const KerasModel m = load_keras_model(dir.path());
  EXPECT_EQ(m.layers, layers);
  EXPECT_EQ(m.source, dir.path());
  ASSERT_EQ(m.weights.size(), 2u);
  EXPECT_EQ(m.weights.at("conv/kernel").shape, (std::vector<int64_t>{3, 3, 3, 4}));
  EXPECT_EQ(m.weights.at("conv/kernel").data,
            std::vector<float>(floats.begin(), floats.begin() + 108));
  EXPECT_EQ(m.weights.at("bn/moving_mean").data, (std::vector<float>{47.0f, 47.5f, 48.0f}));
  EXPECT_EQ(m.weights_sha256, sha256_hex(floats.data(), floats.size() * 4));

  // TF.js' newer layout has no "model_config" level.
  testing::TempDir flat;
  write_folder(flat.path(), {{"class_name", "Model"}, {"config", {{"layers", layers}}}}, table,
               floats);
  EXPECT_EQ(load_keras_model(flat.path()).layers, layers);
}

TEST(LoadKerasModel, RejectsInconsistentFolders) {
  const json layers = small_model().layers;
  const json table = json::array({{{"name", "w"}, {"shape", {2, 3}}, {"offset", 0}}});
  const std::vector<float> six(6, 1.0f);

  expect_bad_input([] { load_keras_model("/no/such/backbone"); }, {"/no/such/backbone"});
  {
    testing::TempDir d;
    testing::write_bytes(d / "model.json", "{}");
    expect_bad_input([&] { load_keras_model(d.path()); }, {"weights.bin", "missing"});
  }
  {
    testing::TempDir d;
    write_folder(d.path(), nested(layers), table, six);
    testing::write_bytes(d / "model.json", "{\"modelTopology\": [1, 2");
    expect_bad_input([&] { load_keras_model(d.path()); }, {"model.json", "JSON"});
  }
  {
    testing::TempDir d;
    write_folder(d.path(), {{"model_config", {{"config", {}}}}}, table, six);
    expect_bad_input([&] { load_keras_model(d.path()); }, {"model.json", "layers"});
  }
  {  // truncated
    testing::TempDir d;
    write_folder(d.path(), nested(layers), table, std::vector<float>(5, 1.0f));
    expect_bad_input([&] { load_keras_model(d.path()); }, {"weights.bin", "'w'"});
  }
  {  // longer than described
    testing::TempDir d;
    write_folder(d.path(), nested(layers), table, std::vector<float>(7, 1.0f));
    expect_bad_input([&] { load_keras_model(d.path()); }, {"weights.bin", "7"});
  }
  {  // not whole floats
    testing::TempDir d;
    write_folder(d.path(), nested(layers), table, six);
    testing::write_bytes(d / "weights.bin", std::string(25, '\0'));
    expect_bad_input([&] { load_keras_model(d.path()); }, {"weights.bin", "float32"});
  }
  {  // listed twice, negative offset, bad shape
    for (const json& bad : {json::array({table[0], table[0]}),
                            json::array({{{"name", "w"}, {"shape", {6}}, {"offset", -1}}}),
                            json::array({{{"name", "w"}, {"shape", {-2, -3}}, {"offset", 0}}})}) {
      testing::TempDir d;
      write_folder(d.path(), nested(layers), bad, six);
      expect_bad_input([&] { load_keras_model(d.path()); }, {"'w'"});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Graph structure.

TEST(KerasToOnnx, OpsetInputOutputsAndFoldedBatchNorm) {
  const onnx::ModelProto p = parse(keras_to_onnx(small_model(), 9, 9, {"relu", "bn"}));
  ASSERT_EQ(p.opset_import_size(), 1);
  EXPECT_EQ(p.opset_import(0).version(), 10);
  ASSERT_EQ(p.graph().input_size(), 1);
  EXPECT_EQ(p.graph().input(0).name(), "input");
  EXPECT_EQ(dims_of(p.graph().input(0)), (std::vector<int64_t>{1, 3, 9, 9}));
  ASSERT_EQ(p.graph().output_size(), 2);
  EXPECT_EQ(p.graph().output(0).name(), "relu");
  EXPECT_EQ(p.graph().output(1).name(), "bn");
  EXPECT_EQ(dims_of(p.graph().output(0)), (std::vector<int64_t>{1, 4, 5, 5}));
  // The BN disappeared into the convolution, which now has a bias and produces "bn".
  EXPECT_TRUE(nodes_of(p, "BatchNormalization").empty());
  const auto convs = nodes_of(p, "Conv");
  ASSERT_EQ(convs.size(), 1u);
  EXPECT_EQ(convs[0]->output(0), "bn");
  ASSERT_EQ(convs[0]->input_size(), 3);
  // Folded weights: kernel * 1 / sqrt(var + eps) (no gamma), bias (0 - mean) * s + beta.
  const KerasModel m = small_model();
  const auto w = floats_of(*init_of(p, convs[0]->input(1)));
  const auto b = floats_of(*init_of(p, convs[0]->input(2)));
  for (int o = 0; o < 4; ++o) {
    const double s = 1.0 / std::sqrt(m.weights.at("bn/moving_variance").data[o] + 1e-3);
    // ONNX [o][i][y][x] = Keras [y][x][i][o]; check (i = 2, y = 1, x = 0).
    EXPECT_NEAR(w[((o * 3 + 2) * 3 + 1) * 3 + 0],
                m.weights.at("conv/kernel").data[((1 * 3 + 0) * 3 + 2) * 4 + o] * s, 1e-6);
    EXPECT_NEAR(b[o], -m.weights.at("bn/moving_mean").data[o] * s + m.weights.at("bn/beta").data[o],
                1e-6);
  }
  const auto clips = nodes_of(p, "Clip");
  ASSERT_EQ(clips.size(), 1u);
  EXPECT_EQ(attr(*clips[0], "max")->f(), 6.0f);
  EXPECT_EQ(attr(*clips[0], "min")->f(), 0.0f);
}

TEST(KerasToOnnx, SamePaddingFollowsTensorFlowAndIsConstant) {
  // Odd size: 9 -> 5 needs 2 rows of padding, one on each side: symmetric pads on the Conv.
  {
    const onnx::ModelProto p = parse(keras_to_onnx(small_model(), 9, 9, {"relu"}));
    EXPECT_TRUE(nodes_of(p, "Pad").empty());
    EXPECT_EQ(ints_attr(*nodes_of(p, "Conv")[0], "pads"), (std::vector<int64_t>{1, 1, 1, 1}));
  }
  // Even size: 10 -> 5 needs 1 row, at the bottom/right: a Pad node with constant pads.
  {
    const onnx::ModelProto p = parse(keras_to_onnx(small_model(), 10, 8, {"relu"}));
    const auto pads = nodes_of(p, "Pad");
    ASSERT_EQ(pads.size(), 1u);
    EXPECT_EQ(pads[0]->input_size(), 1);  // no computed pads input
    EXPECT_EQ(ints_attr(*pads[0], "pads"), (std::vector<int64_t>{0, 0, 0, 0, 0, 0, 1, 1}));
    EXPECT_EQ(attr(*pads[0], "value")->f(), 0.0f);
    EXPECT_EQ(ints_attr(*nodes_of(p, "Conv")[0], "pads"), (std::vector<int64_t>{0, 0, 0, 0}));
    EXPECT_EQ(nodes_of(p, "Conv")[0]->input(0), pads[0]->output(0));
    EXPECT_EQ(dims_of(p.graph().output(0)), (std::vector<int64_t>{1, 4, 5, 4}));
  }
}

TEST(KerasToOnnx, AveragePoolCorrectionMapAndMaxPoolPadding) {
  KerasModel m;
  m.layers = json::array({input_layer(),
                          layer("AveragePooling2D", "avg", pool_cfg(3, 1, "same"), {"input_1"}),
                          layer("MaxPooling2D", "max", pool_cfg(2, 2, "same"), {"input_1"})});
  const onnx::ModelProto p = parse(keras_to_onnx(m, 4, 5, {"avg", "max"}));
  const auto muls = nodes_of(p, "Mul");
  ASSERT_EQ(muls.size(), 1u);
  EXPECT_EQ(muls[0]->output(0), "avg");
  const onnx::TensorProto* corr = init_of(p, muls[0]->input(1));
  ASSERT_NE(corr, nullptr);
  EXPECT_EQ(std::vector<int64_t>(corr->dims().begin(), corr->dims().end()),
            (std::vector<int64_t>{1, 3, 4, 5}));
  // 3x3 windows on a 4x5 image: 4 real pixels at the corners, 6 on the edges, 9 inside.
  const std::vector<float> one_channel = {9 / 4.f, 9 / 6.f, 9 / 6.f, 9 / 6.f, 9 / 4.f, 9 / 6.f, 1.f,
                                          1.f,     1.f,     9 / 6.f, 9 / 6.f, 1.f,     1.f,     1.f,
                                          9 / 6.f, 9 / 4.f, 9 / 6.f, 9 / 6.f, 9 / 6.f, 9 / 4.f};
  const auto values = floats_of(*corr);
  ASSERT_EQ(values.size(), 60u);
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 20; ++i)
      EXPECT_FLOAT_EQ(values[c * 20 + i], one_channel[i]) << c << " " << i;
  for (const auto* n : nodes_of(p, "AveragePool")) {
    EXPECT_TRUE(ints_attr(*n, "pads").empty() ||
                ints_attr(*n, "pads") == std::vector<int64_t>(4, 0));
  }
  // The max pool's padding (one column at the right of 5) can never win.
  bool found = false;
  for (const auto* n : nodes_of(p, "Pad")) {
    if (ints_attr(*n, "pads") == std::vector<int64_t>{0, 0, 0, 0, 0, 0, 0, 1}) {
      found = true;
      EXPECT_EQ(attr(*n, "value")->f(), std::numeric_limits<float>::lowest());
    }
  }
  EXPECT_TRUE(found);
}

TEST(KerasToOnnx, ConvertsOnlyWhatTheOutputsNeedInDependencyOrder) {
  KerasModel m;
  // Listed out of order on purpose; the classifier head is unsupported but not needed.
  m.layers = json::array({layer("Concatenate", "cat", {{"axis", -1}}, {"relu_a", "conv_b"}),
                          layer("Activation", "relu_a", {{"activation", "relu"}}, {"conv_a"}),
                          input_layer(),
                          layer("Conv2D", "conv_a", conv_cfg(2, 1, 1, "valid"), {"input_1"}),
                          layer("Conv2D", "conv_b", conv_cfg(3, 3, 1, "same"), {"relu_a"}),
                          layer("Flatten", "flatten", json::object(), {"cat"}),
                          layer("Dense", "dense", {{"units", 5}}, {"flatten"})});
  m.weights["conv_a/kernel"] = filled({1, 1, 3, 2}, 0.1f);
  m.weights["conv_b/kernel"] = filled({3, 3, 2, 3}, -0.1f);
  const onnx::ModelProto p = parse(keras_to_onnx(m, 6, 6, {"cat"}));
  std::set<std::string> produced{"input"};
  for (const auto& t : p.graph().initializer()) produced.insert(t.name());
  for (const auto& n : p.graph().node()) {
    for (const auto& in : n.input())
      EXPECT_TRUE(produced.count(in)) << n.output(0) << " reads " << in;
    for (const auto& out : n.output()) produced.insert(out);
  }
  EXPECT_FALSE(produced.count("flatten"));
  EXPECT_FALSE(produced.count("dense"));
  EXPECT_EQ(dims_of(p.graph().output(0)), (std::vector<int64_t>{1, 5, 6, 6}));

  expect_bad_input([&] { keras_to_onnx(m, 6, 6, {"dense"}); },
                   {"flatten", "Flatten", "unsupported"});
  expect_bad_input([&] { keras_to_onnx(m, 6, 6, {"mixed9"}); }, {"mixed9"});
}

TEST(KerasToOnnx, RejectsWhatItCannotConvert) {
  auto with = [](json extra, std::map<std::string, Tensor> weights = {}) {
    KerasModel m;
    m.source = "/models/x";
    m.layers = json::array({input_layer(), extra});
    m.weights = std::move(weights);
    return m;
  };
  // Missing weight, wrong kernel shape.
  expect_bad_input(
      [&] {
        keras_to_onnx(with(layer("Conv2D", "c", conv_cfg(2, 3, 1, "same"), {"input_1"})), 8, 8,
                      {"c"});
      },
      {"/models/x", "'c'", "c/kernel", "missing"});
  expect_bad_input(
      [&] {
        keras_to_onnx(with(layer("Conv2D", "c", conv_cfg(2, 3, 1, "same"), {"input_1"}),
                           {{"c/kernel", filled({3, 3, 4, 2}, 0.f)}}),
                      8, 8, {"c"});
      },
      {"c/kernel", "shape"});
  // Input smaller than a 'valid' kernel.
  expect_bad_input(
      [&] {
        keras_to_onnx(with(layer("Conv2D", "c", conv_cfg(2, 3, 1, "valid"), {"input_1"}),
                           {{"c/kernel", filled({3, 3, 3, 2}, 0.f)}}),
                      2, 2, {"c"});
      },
      {"'c'", "too small"});
  // channels_first, unknown activation, slope on ReLU, shared layer.
  json cf = conv_cfg(2, 3, 1, "same");
  cf["data_format"] = "channels_first";
  expect_bad_input([&] { keras_to_onnx(with(layer("Conv2D", "c", cf, {"input_1"})), 8, 8, {"c"}); },
                   {"channels_first"});
  expect_bad_input(
      [&] {
        keras_to_onnx(with(layer("Activation", "a", {{"activation", "sigmoid"}}, {"input_1"})), 8,
                      8, {"a"});
      },
      {"sigmoid"});
  expect_bad_input(
      [&] {
        keras_to_onnx(with(layer("ReLU", "r", {{"negative_slope", 0.1}}, {"input_1"})), 8, 8,
                      {"r"});
      },
      {"negative_slope"});
  json wrong_type = conv_cfg(2, 3, 1, "same");
  wrong_type["filters"] = "two";
  expect_bad_input(
      [&] {
        keras_to_onnx(with(layer("Conv2D", "c", wrong_type, {"input_1"}),
                           {{"c/kernel", filled({3, 3, 3, 2}, 0.f)}}),
                      8, 8, {"c"});
      },
      {"/models/x", "'c'"});
  json shared = layer("Activation", "a", {{"activation", "relu"}}, {"input_1"});
  shared["inbound_nodes"].push_back(shared["inbound_nodes"][0]);
  expect_bad_input([&] { keras_to_onnx(with(shared), 8, 8, {"a"}); }, {"shared"});
  expect_bad_input([&] { keras_to_onnx(small_model(), 0, 8, {"relu"}); }, {"size"});
  expect_bad_input([&] { keras_to_onnx(small_model(), 8, 8, {}); }, {"output"});
}

}  // namespace
}  // namespace patchcore
