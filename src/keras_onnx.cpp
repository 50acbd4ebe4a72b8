#include "keras_onnx.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <unordered_map>

#include "error.h"
#include "file_io.h"
#include "sha256.h"

namespace patchcore {

namespace fs = std::filesystem;
using nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "weights.bin and ONNX raw_data are little-endian; a big-endian host needs swaps");

namespace {

const json* find_layers(const json& doc) {
  if (!doc.is_object() || !doc.contains("modelTopology")) return nullptr;
  const json& topo = doc["modelTopology"];
  // Keras' to_json() nests the model under "model_config"; newer TF.js writes it directly.
  const json& model = topo.contains("model_config") ? topo["model_config"] : topo;
  if (!model.is_object() || !model.contains("config")) return nullptr;
  const json& config = model["config"];
  if (!config.is_object() || !config.contains("layers") || !config["layers"].is_array()) {
    return nullptr;
  }
  return &config["layers"];
}

}  // namespace

KerasModel load_keras_model(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw_bad_input(dir.string(), "no such backbone folder");
  const fs::path json_path = dir / "model.json";
  const fs::path bin_path = dir / "weights.bin";
  if (!fs::is_regular_file(json_path)) throw_bad_input(json_path.string(), "missing");
  if (!fs::is_regular_file(bin_path)) throw_bad_input(bin_path.string(), "missing");

  json doc;
  try {
    doc = json::parse(read_file(json_path));
  } catch (const json::exception& e) {
    throw_bad_input(json_path.string(), std::string("not valid JSON: ") + e.what());
  }
  const json* layers = find_layers(doc);
  if (layers == nullptr) {
    throw_bad_input(json_path.string(), "no modelTopology with a list of layers");
  }
  if (!doc.contains("weights") || !doc["weights"].is_array()) {
    throw_bad_input(json_path.string(), "no \"weights\" table");
  }

  const std::string bytes = read_file(bin_path);
  if (bytes.size() % sizeof(float) != 0) {
    throw_bad_input(bin_path.string(), "size " + std::to_string(bytes.size()) +
                                           " is not a whole number of float32 values");
  }
  const int64_t n_floats = static_cast<int64_t>(bytes.size() / sizeof(float));

  KerasModel model;
  model.source = dir;
  model.layers = *layers;
  int64_t end_max = 0;
  for (const json& entry : doc["weights"]) {
    if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() ||
        !entry.contains("shape") || !entry["shape"].is_array() || !entry.contains("offset") ||
        !entry["offset"].is_number_integer()) {
      throw_bad_input(json_path.string(), "weights entry without name, shape and offset: " +
                                              entry.dump().substr(0, 200));
    }
    const std::string name = entry["name"].get<std::string>();
    Tensor t;
    for (const json& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        throw_bad_input(json_path.string(), "weight '" + name + "' has a bad shape");
      }
      t.shape.push_back(d.get<int64_t>());
    }
    const int64_t offset = entry["offset"].get<int64_t>();
    const int64_t count = Tensor::count(t.shape);
    if (offset < 0 || offset > n_floats || count > n_floats - offset) {
      throw_bad_input(bin_path.string(),
                      "weight '" + name + "' needs floats [" + std::to_string(offset) + ", " +
                          std::to_string(offset + count) + ") but the file holds " +
                          std::to_string(n_floats) + " (truncated or foreign file?)");
    }
    t.data.resize(static_cast<size_t>(count));
    std::memcpy(t.data.data(), bytes.data() + offset * sizeof(float), count * sizeof(float));
    if (!model.weights.emplace(name, std::move(t)).second) {
      throw_bad_input(json_path.string(), "weight '" + name + "' listed twice");
    }
    end_max = std::max(end_max, offset + count);
  }
  if (end_max != n_floats) {
    throw_bad_input(bin_path.string(), "holds " + std::to_string(n_floats) +
                                           " floats but model.json describes " +
                                           std::to_string(end_max));
  }
  model.weights_sha256 = sha256_hex(bytes.data(), bytes.size());
  return model;
}

namespace {

struct Shape {  // of one image, NCHW with N = 1
  int64_t c = 0, h = 0, w = 0;
};

struct Layer {
  std::string name;
  std::string cls;
  const json* config = nullptr;
  std::vector<std::string> inputs;
};

struct Pads {  // begin/end along H and W
  int64_t t = 0, b = 0, l = 0, r = 0;
  bool any() const { return t || b || l || r; }
  bool symmetric() const { return t == b && l == r; }
};

// TensorFlow's 'same' rule: output ceil(in / s); the odd padding element goes to the end.
void same_padding(int64_t in, int64_t k_eff, int64_t s, int64_t& begin, int64_t& end) {
  const int64_t out = (in + s - 1) / s;
  const int64_t total = std::max<int64_t>((out - 1) * s + k_eff - in, 0);
  begin = total / 2;
  end = total - begin;
}

class Converter {
 public:
  Converter(const KerasModel& model, int height, int width)
      : model_(model), height_(height), width_(width) {
    where_ = model.source.empty() ? std::string("Keras model") : model.source.string();
  }

  std::vector<uint8_t> convert(const std::vector<std::string>& outputs);
  const std::string& current_layer() const { return current_; }

 private:
  [[noreturn]] void fail(const Layer& l, const std::string& what) const {
    throw_bad_input(where_, "layer '" + l.name + "' (" + l.cls + "): " + what);
  }

  void index_layers();
  void visit(const std::string& name, std::set<std::string>& in_progress);
  void emit(const Layer& l);

  // Configuration helpers.
  const json& cfg(const Layer& l, const char* key) const;
  bool has_cfg(const Layer& l, const char* key) const {
    return l.config->contains(key) && !(*l.config)[key].is_null();
  }
  std::pair<int64_t, int64_t> pair_cfg(const Layer& l, const char* key) const;
  std::string string_cfg(const Layer& l, const char* key, const std::string& def) const;
  void require_channels_last(const Layer& l) const;
  const Tensor& weight(const Layer& l, const std::string& key,
                       const std::vector<int64_t>& shape) const;
  const Shape& input_shape(const Layer& l, size_t i = 0) const { return shape_.at(l.inputs[i]); }
  const std::string& input_tensor(const Layer& l, size_t i = 0) const {
    return tensor_.at(l.inputs[i]);
  }

  // Graph helpers.
  onnx::NodeProto* node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::string& output);
  std::string initializer(const std::string& name, const std::vector<int64_t>& dims,
                          const std::vector<float>& values);
  std::string pad(const std::string& in, const std::string& out, const Pads& p, float value);

  struct BnParams {
    std::vector<float> mean, var, gamma, beta;
    double eps = 1e-3;
  };
  BnParams batch_norm_params(const Layer& l, int64_t channels) const;

  void emit_conv(const Layer& l);
  void emit_batch_norm(const Layer& l);
  void emit_pool(const Layer& l);
  void emit_zero_padding(const Layer& l);
  void finish(const Layer& l, const std::string& tensor, const Shape& s) {
    tensor_[l.name] = tensor;
    shape_[l.name] = s;
  }

  const KerasModel& model_;
  const int height_, width_;
  std::string where_;
  std::unordered_map<std::string, Layer> layers_;
  std::vector<const Layer*> order_;
  std::set<std::string> visited_;
  std::unordered_map<std::string, int> consumers_;  // within the converted subgraph
  std::set<std::string> requested_;
  std::set<std::string> folded_;  // BatchNormalization layers folded into their convolution
  std::unordered_map<std::string, std::string> tensor_;  // layer -> ONNX tensor holding it
  std::unordered_map<std::string, Shape> shape_;
  onnx::GraphProto* graph_ = nullptr;
  bool have_input_ = false;
  std::string current_;  // the layer being converted, for messages
};

const json& Converter::cfg(const Layer& l, const char* key) const {
  if (!has_cfg(l, key)) fail(l, std::string("config lacks '") + key + "'");
  return (*l.config)[key];
}

std::pair<int64_t, int64_t> Converter::pair_cfg(const Layer& l, const char* key) const {
  const json& v = cfg(l, key);
  if (v.is_number_integer()) return {v.get<int64_t>(), v.get<int64_t>()};
  if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer()) {
    return {v[0].get<int64_t>(), v[1].get<int64_t>()};
  }
  fail(l, std::string("'") + key + "' is not an integer pair: " + v.dump());
}

std::string Converter::string_cfg(const Layer& l, const char* key, const std::string& def) const {
  if (!has_cfg(l, key)) return def;
  const json& v = (*l.config)[key];
  if (!v.is_string()) fail(l, std::string("'") + key + "' is not a string");
  return v.get<std::string>();
}

void Converter::require_channels_last(const Layer& l) const {
  const std::string f = string_cfg(l, "data_format", "channels_last");
  if (f != "channels_last") fail(l, "data_format '" + f + "' is not supported");
}

const Tensor& Converter::weight(const Layer& l, const std::string& key,
                                const std::vector<int64_t>& shape) const {
  const std::string name = l.name + "/" + key;
  auto it = model_.weights.find(name);
  if (it == model_.weights.end()) fail(l, "weight '" + name + "' is missing");
  if (it->second.shape != shape) {
    std::string want, got;
    for (int64_t d : shape) want += std::to_string(d) + ",";
    for (int64_t d : it->second.shape) got += std::to_string(d) + ",";
    fail(l, "weight '" + name + "' has shape [" + got + "] instead of [" + want + "]");
  }
  return it->second;
}

onnx::NodeProto* Converter::node(const std::string& op, const std::vector<std::string>& inputs,
                                 const std::string& output) {
  onnx::NodeProto* n = graph_->add_node();
  n->set_op_type(op);
  n->set_name(output);
  for (const std::string& i : inputs) n->add_input(i);
  n->add_output(output);
  return n;
}

void set_ints(onnx::NodeProto* n, const char* name, const std::vector<int64_t>& values) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t v : values) a->add_ints(v);
}

void set_int(onnx::NodeProto* n, const char* name, int64_t value) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(value);
}

void set_float(onnx::NodeProto* n, const char* name, float value) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(value);
}

void set_string(onnx::NodeProto* n, const char* name, const std::string& value) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(value);
}

std::string Converter::initializer(const std::string& name, const std::vector<int64_t>& dims,
                                   const std::vector<float>& values) {
  PATCHCORE_ASSERT(Tensor::count(dims) == static_cast<int64_t>(values.size()));
  onnx::TensorProto* t = graph_->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(values.data(), values.size() * sizeof(float));
  return name;
}

// Opset 10 Pad: the pads are an attribute, so OpenCV sees constants.
std::string Converter::pad(const std::string& in, const std::string& out, const Pads& p,
                           float value) {
  onnx::NodeProto* n = node("Pad", {in}, out);
  set_string(n, "mode", "constant");
  set_ints(n, "pads", {0, 0, p.t, p.l, 0, 0, p.b, p.r});
  set_float(n, "value", value);
  return out;
}

void Converter::index_layers() {
  for (const json& lj : model_.layers) {
    Layer l;
    if (!lj.is_object() || !lj.contains("name") || !lj["name"].is_string() ||
        !lj.contains("class_name") || !lj["class_name"].is_string() || !lj.contains("config") ||
        !lj["config"].is_object()) {
      throw_bad_input(where_,
                      "layer without name, class_name or config: " + lj.dump().substr(0, 200));
    }
    l.name = lj["name"].get<std::string>();
    l.cls = lj["class_name"].get<std::string>();
    l.config = &lj["config"];
    if (!lj.contains("inbound_nodes") || !lj["inbound_nodes"].is_array()) {
      fail(l, "no inbound_nodes (only functional models are supported)");
    }
    const json& nodes = lj["inbound_nodes"];
    if (nodes.size() > 1) fail(l, "shared layers (several inbound nodes) are not supported");
    if (nodes.size() == 1) {
      if (!nodes[0].is_array()) fail(l, "unrecognised inbound_nodes format");
      for (const json& in : nodes[0]) {
        if (!in.is_array() || in.size() < 3 || !in[0].is_string() || in[1] != 0 || in[2] != 0) {
          fail(l, "unsupported inbound node " + in.dump());
        }
        l.inputs.push_back(in[0].get<std::string>());
      }
    }
    // Internal tensors are named "<layer>/...", and the graph input "input".
    if (l.name.empty() || l.name.find('/') != std::string::npos ||
        (l.name == "input" && l.cls != "InputLayer")) {
      fail(l, "unsupported layer name");
    }
    const std::string name = l.name;
    if (!layers_.emplace(name, std::move(l)).second) {
      throw_bad_input(where_, "layer name '" + name + "' used twice");
    }
  }
}

// Depth-first post-order from the requested outputs: every layer after its inputs, and only
// the layers the outputs need.
void Converter::visit(const std::string& name, std::set<std::string>& in_progress) {
  if (visited_.count(name)) return;
  auto it = layers_.find(name);
  if (it == layers_.end()) throw_bad_input(where_, "no layer named '" + name + "'");
  if (!in_progress.insert(name).second) throw_bad_input(where_, "cycle through '" + name + "'");
  for (const std::string& in : it->second.inputs) {
    if (!layers_.count(in)) fail(it->second, "input '" + in + "' is not a layer");
    visit(in, in_progress);
  }
  in_progress.erase(name);
  visited_.insert(name);
  order_.push_back(&it->second);
}

std::vector<uint8_t> Converter::convert(const std::vector<std::string>& outputs) {
  if (height_ <= 0 || width_ <= 0) {
    throw_bad_input(where_, "input size " + std::to_string(height_) + "x" + std::to_string(width_) +
                                " is not positive");
  }
  if (outputs.empty()) throw_bad_input(where_, "no output layer requested");
  index_layers();
  for (const std::string& o : outputs) {
    if (!layers_.count(o)) throw_bad_input(where_, "no layer named '" + o + "'");
    if (!requested_.insert(o).second) throw_bad_input(where_, "output '" + o + "' requested twice");
  }
  std::set<std::string> in_progress;
  for (const std::string& o : outputs) visit(o, in_progress);
  for (const Layer* l : order_) {
    for (const std::string& in : l->inputs) consumers_[in]++;
  }

  onnx::ModelProto proto;
  proto.set_ir_version(5);  // matches opset 10
  proto.set_producer_name("patchcore keras_onnx");
  proto.add_opset_import()->set_version(10);
  graph_ = proto.mutable_graph();
  graph_->set_name("keras");
  for (const Layer* l : order_) emit(*l);

  for (const std::string& o : outputs) {
    const Shape& s = shape_.at(o);
    std::string t = tensor_.at(o);
    if (t != o) t = node("Identity", {t}, o)->output(0);  // e.g. the input layer itself
    onnx::ValueInfoProto* v = graph_->add_output();
    v->set_name(o);
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : {int64_t{1}, s.c, s.h, s.w}) tt->mutable_shape()->add_dim()->set_dim_value(d);
  }

  std::string bytes;
  if (!proto.SerializeToString(&bytes)) {
    throw_bad_input(where_, "the ONNX graph is too large to serialise");
  }
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

void Converter::emit(const Layer& l) {
  if (folded_.count(l.name)) return;
  current_ = l.name;
  const std::string& c = l.cls;
  if (c == "InputLayer") {
    if (have_input_) fail(l, "a second input layer: only single-input models are supported");
    have_input_ = true;
    int64_t channels = 3;
    if (has_cfg(l, "batch_input_shape")) {
      const json& s = cfg(l, "batch_input_shape");
      if (!s.is_array() || s.size() != 4) fail(l, "input is not an image batch [N, H, W, C]");
      if (s[3].is_number_integer()) channels = s[3].get<int64_t>();
    }
    onnx::ValueInfoProto* v = graph_->add_input();
    v->set_name("input");
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : {int64_t{1}, channels, int64_t{height_}, int64_t{width_}}) {
      tt->mutable_shape()->add_dim()->set_dim_value(d);
    }
    finish(l, "input", Shape{channels, height_, width_});
    return;
  }
  for (size_t i = 0; i < l.inputs.size(); ++i) {
    PATCHCORE_ASSERT(shape_.count(l.inputs[i]));
  }
  const size_t want_inputs = (c == "Add" || c == "Concatenate") ? 2 : 1;
  if (l.inputs.size() < want_inputs || (want_inputs == 1 && l.inputs.size() != 1)) {
    fail(l, "unexpected number of inputs: " + std::to_string(l.inputs.size()));
  }

  if (c == "Conv2D" || c == "DepthwiseConv2D") {
    emit_conv(l);
  } else if (c == "BatchNormalization") {
    emit_batch_norm(l);
  } else if (c == "MaxPooling2D" || c == "AveragePooling2D") {
    emit_pool(l);
  } else if (c == "ZeroPadding2D") {
    emit_zero_padding(l);
  } else if (c == "ReLU") {
    for (const char* key : {"negative_slope", "threshold"}) {
      if (has_cfg(l, key) && cfg(l, key).get<double>() != 0.0) {
        fail(l, std::string("'") + key + "' other than 0 is not supported");
      }
    }
    if (has_cfg(l, "max_value")) {
      const json& m = cfg(l, "max_value");
      if (!m.is_number()) fail(l, "max_value is not a number");
      onnx::NodeProto* n = node("Clip", {input_tensor(l)}, l.name);
      set_float(n, "min", 0.0f);
      set_float(n, "max", m.get<float>());
    } else {
      node("Relu", {input_tensor(l)}, l.name);
    }
    finish(l, l.name, input_shape(l));
  } else if (c == "Activation") {
    const std::string act = string_cfg(l, "activation", "");
    if (act == "relu") {
      node("Relu", {input_tensor(l)}, l.name);
    } else if (act == "linear") {
      node("Identity", {input_tensor(l)}, l.name);
    } else {
      fail(l, "activation '" + act + "' is not supported");
    }
    finish(l, l.name, input_shape(l));
  } else if (c == "Add") {
    const Shape& s = input_shape(l);
    for (size_t i = 1; i < l.inputs.size(); ++i) {
      const Shape& o = input_shape(l, i);
      if (o.c != s.c || o.h != s.h || o.w != s.w) fail(l, "inputs of different shapes");
    }
    std::string acc = input_tensor(l);
    for (size_t i = 1; i < l.inputs.size(); ++i) {
      const std::string out =
          i + 1 == l.inputs.size() ? l.name : l.name + "/sum" + std::to_string(i);
      acc = node("Add", {acc, input_tensor(l, i)}, out)->output(0);
    }
    finish(l, l.name, s);
  } else if (c == "Concatenate") {
    const int64_t axis = has_cfg(l, "axis") ? cfg(l, "axis").get<int64_t>() : -1;
    if (axis != -1 && axis != 3) fail(l, "only concatenation along channels is supported");
    Shape s = input_shape(l);
    s.c = 0;
    std::vector<std::string> ins;
    for (size_t i = 0; i < l.inputs.size(); ++i) {
      const Shape& o = input_shape(l, i);
      if (o.h != s.h || o.w != s.w) fail(l, "inputs of different spatial sizes");
      s.c += o.c;
      ins.push_back(input_tensor(l, i));
    }
    set_int(node("Concat", ins, l.name), "axis", 1);
    finish(l, l.name, s);
  } else {
    fail(l, "unsupported layer type (needed for the requested outputs)");
  }
}

void Converter::emit_zero_padding(const Layer& l) {
  require_channels_last(l);
  const json& p = cfg(l, "padding");
  Pads pads;
  auto as_int = [&](const json& v) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0) fail(l, "bad padding " + p.dump());
    return v.get<int64_t>();
  };
  if (p.is_number_integer()) {
    pads.t = pads.b = pads.l = pads.r = as_int(p);
  } else if (p.is_array() && p.size() == 2 && p[0].is_array() && p[1].is_array() &&
             p[0].size() == 2 && p[1].size() == 2) {
    pads = Pads{as_int(p[0][0]), as_int(p[0][1]), as_int(p[1][0]), as_int(p[1][1])};
  } else if (p.is_array() && p.size() == 2) {
    pads.t = pads.b = as_int(p[0]);
    pads.l = pads.r = as_int(p[1]);
  } else {
    fail(l, "bad padding " + p.dump());
  }
  Shape s = input_shape(l);
  if (pads.any()) {
    pad(input_tensor(l), l.name, pads, 0.0f);
  } else {
    node("Identity", {input_tensor(l)}, l.name);
  }
  s.h += pads.t + pads.b;
  s.w += pads.l + pads.r;
  finish(l, l.name, s);
}

void Converter::emit_conv(const Layer& l) {
  require_channels_last(l);
  const bool depthwise = l.cls == "DepthwiseConv2D";
  const Shape in = input_shape(l);
  const auto [kh, kw] = pair_cfg(l, "kernel_size");
  const auto [sh, sw] = pair_cfg(l, "strides");
  const auto [dh, dw] = has_cfg(l, "dilation_rate") ? pair_cfg(l, "dilation_rate")
                                                    : std::pair<int64_t, int64_t>{1, 1};
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1) fail(l, "bad kernel geometry");
  const std::string padding = string_cfg(l, "padding", "valid");
  const std::string activation = string_cfg(l, "activation", "linear");
  if (activation != "linear" && activation != "relu") {
    fail(l, "activation '" + activation + "' is not supported");
  }
  const bool use_bias = has_cfg(l, "use_bias") ? cfg(l, "use_bias").get<bool>() : true;

  // Weights in ONNX layout [cout, cin / group, kh, kw].
  int64_t cout = 0, group = 1;
  std::vector<float> w;
  if (depthwise) {
    const int64_t mult =
        has_cfg(l, "depth_multiplier") ? cfg(l, "depth_multiplier").get<int64_t>() : 1;
    if (mult < 1) fail(l, "depth_multiplier must be positive");
    const Tensor& k = weight(l, "depthwise_kernel", {kh, kw, in.c, mult});
    cout = in.c * mult;
    group = in.c;
    w.resize(static_cast<size_t>(cout * kh * kw));
    // TensorFlow's depthwise output channel c * mult + m reads input channel c.
    for (int64_t y = 0; y < kh; ++y)
      for (int64_t x = 0; x < kw; ++x)
        for (int64_t ci = 0; ci < in.c; ++ci)
          for (int64_t m = 0; m < mult; ++m)
            w[((ci * mult + m) * kh + y) * kw + x] = k.data[((y * kw + x) * in.c + ci) * mult + m];
  } else {
    cout = cfg(l, "filters").get<int64_t>();
    if (cout < 1) fail(l, "filters must be positive");
    const Tensor& k = weight(l, "kernel", {kh, kw, in.c, cout});
    w.resize(static_cast<size_t>(cout * in.c * kh * kw));
    for (int64_t y = 0; y < kh; ++y)
      for (int64_t x = 0; x < kw; ++x)
        for (int64_t ci = 0; ci < in.c; ++ci)
          for (int64_t o = 0; o < cout; ++o)
            w[((o * in.c + ci) * kh + y) * kw + x] = k.data[((y * kw + x) * in.c + ci) * cout + o];
  }
  std::vector<double> bias(static_cast<size_t>(cout), 0.0);
  if (use_bias) {
    const Tensor& b = weight(l, "bias", {cout});
    std::copy(b.data.begin(), b.data.end(), bias.begin());
  }

  // Output size and TensorFlow padding.
  const int64_t keh = (kh - 1) * dh + 1, kew = (kw - 1) * dw + 1;
  Pads pads;
  Shape out{cout, 0, 0};
  if (padding == "same") {
    same_padding(in.h, keh, sh, pads.t, pads.b);
    same_padding(in.w, kew, sw, pads.l, pads.r);
    out.h = (in.h + sh - 1) / sh;
    out.w = (in.w + sw - 1) / sw;
  } else if (padding == "valid") {
    if (in.h < keh || in.w < kew) {
      fail(l, "input " + std::to_string(in.h) + "x" + std::to_string(in.w) +
                  " is smaller than the kernel: the image size is too small for this network");
    }
    out.h = (in.h - keh) / sh + 1;
    out.w = (in.w - kew) / sw + 1;
  } else {
    fail(l, "padding '" + padding + "' is not supported");
  }

  // Fold a following BatchNormalization when nothing else reads the convolution.
  std::string final_name = l.name;
  const Layer* bn = nullptr;
  if (activation == "linear" && consumers_[l.name] == 1 && !requested_.count(l.name)) {
    for (const Layer* next : order_) {
      if (next->cls == "BatchNormalization" && next->inputs.size() == 1 &&
          next->inputs[0] == l.name) {
        bn = next;
      }
    }
  }
  if (bn != nullptr) {
    const BnParams p = batch_norm_params(*bn, cout);
    const size_t per = w.size() / static_cast<size_t>(cout);
    for (int64_t o = 0; o < cout; ++o) {
      const double scale = p.gamma[o] / std::sqrt(static_cast<double>(p.var[o]) + p.eps);
      for (size_t i = 0; i < per; ++i) w[o * per + i] = static_cast<float>(w[o * per + i] * scale);
      bias[o] = (bias[o] - p.mean[o]) * scale + p.beta[o];
    }
    folded_.insert(bn->name);
    final_name = bn->name;
  }

  std::string x = input_tensor(l);
  if (pads.any() && !pads.symmetric()) {
    x = pad(x, l.name + "/pad", pads, 0.0f);
    pads = Pads{};
  }
  std::vector<std::string> inputs{x, initializer(l.name + "/W", {cout, in.c / group, kh, kw}, w)};
  if (use_bias || bn != nullptr) {
    inputs.push_back(
        initializer(l.name + "/B", {cout}, std::vector<float>(bias.begin(), bias.end())));
  }
  const std::string conv_out = activation == "relu" ? l.name + "/preact" : final_name;
  onnx::NodeProto* n = node("Conv", inputs, conv_out);
  set_ints(n, "kernel_shape", {kh, kw});
  set_ints(n, "strides", {sh, sw});
  set_ints(n, "dilations", {dh, dw});
  set_ints(n, "pads", {pads.t, pads.l, pads.b, pads.r});
  set_int(n, "group", group);
  if (activation == "relu") node("Relu", {conv_out}, final_name);
  finish(l, final_name, out);
  if (bn != nullptr) finish(*bn, final_name, out);
}

Converter::BnParams Converter::batch_norm_params(const Layer& l, int64_t channels) const {
  const int64_t axis = has_cfg(l, "axis") ? cfg(l, "axis").get<int64_t>() : -1;
  if (axis != -1 && axis != 3) fail(l, "only normalisation over channels is supported");
  BnParams p;
  p.eps = has_cfg(l, "epsilon") ? cfg(l, "epsilon").get<double>() : 1e-3;
  const bool center = has_cfg(l, "center") ? cfg(l, "center").get<bool>() : true;
  const bool scale = has_cfg(l, "scale") ? cfg(l, "scale").get<bool>() : true;
  p.mean = weight(l, "moving_mean", {channels}).data;
  p.var = weight(l, "moving_variance", {channels}).data;
  // Keras' scale = false / center = false store no gamma / beta.
  p.gamma = scale ? weight(l, "gamma", {channels}).data : std::vector<float>(channels, 1.0f);
  p.beta = center ? weight(l, "beta", {channels}).data : std::vector<float>(channels, 0.0f);
  return p;
}

void Converter::emit_batch_norm(const Layer& l) {
  const Shape s = input_shape(l);
  const BnParams p = batch_norm_params(l, s.c);
  onnx::NodeProto* n = node(
      "BatchNormalization",
      {input_tensor(l), initializer(l.name + "/gamma", {s.c}, p.gamma),
       initializer(l.name + "/beta", {s.c}, p.beta), initializer(l.name + "/mean", {s.c}, p.mean),
       initializer(l.name + "/var", {s.c}, p.var)},
      l.name);
  set_float(n, "epsilon", static_cast<float>(p.eps));
  finish(l, l.name, s);
}

void Converter::emit_pool(const Layer& l) {
  require_channels_last(l);
  const bool max = l.cls == "MaxPooling2D";
  const Shape in = input_shape(l);
  const auto [kh, kw] = pair_cfg(l, "pool_size");
  const auto [sh, sw] =
      has_cfg(l, "strides") ? pair_cfg(l, "strides") : std::pair<int64_t, int64_t>{kh, kw};
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1) fail(l, "bad pooling geometry");
  const std::string padding = string_cfg(l, "padding", "valid");
  Pads pads;
  Shape out{in.c, 0, 0};
  if (padding == "same") {
    same_padding(in.h, kh, sh, pads.t, pads.b);
    same_padding(in.w, kw, sw, pads.l, pads.r);
    out.h = (in.h + sh - 1) / sh;
    out.w = (in.w + sw - 1) / sw;
  } else if (padding == "valid") {
    if (in.h < kh || in.w < kw) {
      fail(l, "input " + std::to_string(in.h) + "x" + std::to_string(in.w) +
                  " is smaller than the pool: the image size is too small for this network");
    }
    out.h = (in.h - kh) / sh + 1;
    out.w = (in.w - kw) / sw + 1;
  } else {
    fail(l, "padding '" + padding + "' is not supported");
  }

  // The pooling itself never sees padding: a max pool pads with the lowest float, which never
  // wins; an average pool pads with zeros and rescales each output by window area / number of
  // real pixels in the window.
  std::string x = input_tensor(l);
  if (pads.any()) {
    x = pad(x, l.name + "/pad", pads, max ? std::numeric_limits<float>::lowest() : 0.0f);
  }
  const bool correct = !max && pads.any();
  onnx::NodeProto* n =
      node(max ? "MaxPool" : "AveragePool", {x}, correct ? l.name + "/padded_mean" : l.name);
  set_ints(n, "kernel_shape", {kh, kw});
  set_ints(n, "strides", {sh, sw});
  if (!max) set_int(n, "count_include_pad", 1);
  if (correct) {
    auto inside = [](int64_t o, int64_t s, int64_t begin, int64_t k, int64_t size) {
      const int64_t lo = std::max<int64_t>(o * s - begin, 0);
      const int64_t hi = std::min<int64_t>(o * s - begin + k, size);
      return hi - lo;
    };
    std::vector<float> map(static_cast<size_t>(in.c * out.h * out.w));
    for (int64_t y = 0; y < out.h; ++y) {
      for (int64_t x2 = 0; x2 < out.w; ++x2) {
        const int64_t count = inside(y, sh, pads.t, kh, in.h) * inside(x2, sw, pads.l, kw, in.w);
        PATCHCORE_ASSERT(count > 0);
        const float f = static_cast<float>(static_cast<double>(kh * kw) / count);
        for (int64_t ch = 0; ch < in.c; ++ch) map[(ch * out.h + y) * out.w + x2] = f;
      }
    }
    // [1, C, h, w] rather than [1, 1, h, w]: OpenCV 4.6 does not broadcast the constant.
    node("Mul",
         {l.name + "/padded_mean",
          initializer(l.name + "/correction", {1, in.c, out.h, out.w}, map)},
         l.name);
  }
  finish(l, l.name, out);
}

}  // namespace

std::vector<uint8_t> keras_to_onnx(const KerasModel& model, int height, int width,
                                   const std::vector<std::string>& outputs) {
  Converter converter(model, height, width);
  try {
    return converter.convert(outputs);
  } catch (const nlohmann::json::exception& e) {
    // A configuration value of the wrong JSON type.
    throw_bad_input(
        model.source.empty() ? std::string("Keras model") : model.source.string(),
        "malformed configuration of layer '" + converter.current_layer() + "': " + e.what());
  }
}

}  // namespace patchcore
