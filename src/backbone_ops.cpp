#include "backbone_ops.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include "error.h"
#include "onnx_graph.h"

namespace patchcore {

namespace {

// ---------------------------------------------------------------------------------------------
// Reading the ONNX graph.

const onnx::AttributeProto* attribute(const onnx::NodeProto& n, const char* name) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

std::vector<int64_t> ints_attr(const onnx::NodeProto& n, const char* name,
                               std::vector<int64_t> def) {
  const auto* a = attribute(n, name);
  if (a == nullptr) return def;
  return {a->ints().begin(), a->ints().end()};
}

int64_t int_attr(const onnx::NodeProto& n, const char* name, int64_t def) {
  const auto* a = attribute(n, name);
  return a == nullptr ? def : a->i();
}

float float_attr(const onnx::NodeProto& n, const char* name, float def) {
  const auto* a = attribute(n, name);
  return a == nullptr ? def : a->f();
}

std::string string_attr(const onnx::NodeProto& n, const char* name, const std::string& def) {
  const auto* a = attribute(n, name);
  return a == nullptr ? def : a->s();
}

[[noreturn]] void unsupported(const onnx::NodeProto& n, const std::string& what) {
  throw Unsupported("node '" + (n.output_size() > 0 ? n.output(0) : n.name()) + "' (" +
                    n.op_type() + "): " + what);
}

std::vector<float> floats_of(const onnx::TensorProto& t) {
  if (t.data_type() != onnx::TensorProto::FLOAT) {
    throw Unsupported("initializer '" + t.name() + "' is not float32");
  }
  int64_t count = 1;
  for (int64_t d : t.dims()) count *= d;
  std::vector<float> v;
  if (!t.raw_data().empty()) {
    if (t.raw_data().size() != static_cast<size_t>(count) * sizeof(float)) {
      throw_bad_input(kWhere, "initializer '" + t.name() + "' has the wrong number of bytes");
    }
    v.resize(static_cast<size_t>(count));
    std::memcpy(v.data(), t.raw_data().data(), t.raw_data().size());
  } else {
    v.assign(t.float_data().begin(), t.float_data().end());
    if (static_cast<int64_t>(v.size()) != count) {
      throw_bad_input(kWhere, "initializer '" + t.name() + "' has the wrong number of values");
    }
  }
  return v;
}

std::vector<int64_t> int64s_of(const onnx::TensorProto& t) {
  if (t.data_type() != onnx::TensorProto::INT64) {
    throw Unsupported("initializer '" + t.name() + "' is not int64");
  }
  if (!t.raw_data().empty()) {
    std::vector<int64_t> v(t.raw_data().size() / sizeof(int64_t));
    std::memcpy(v.data(), t.raw_data().data(), v.size() * sizeof(int64_t));
    return v;
  }
  return {t.int64_data().begin(), t.int64_data().end()};
}
class Graph {
 public:
  Graph(const std::vector<uint8_t>& bytes, const std::vector<std::string>& layers) {
    const onnx::ModelProto model = parse_onnx(bytes, kWhere);
    if (layers.empty()) throw_bad_input(kWhere, "no output layer requested");
    const onnx::GraphProto& g = model.graph();
    for (const auto& t : g.initializer()) init_[t.name()] = &t;
    const GraphInput input = image_input(model, kWhere);
    input_shape = input.shape;
    ids_[input.name] = 0;
    values = 1;

    // Only the nodes the requested layers depend on: a classifier head past them may use
    // operators this engine does not implement.
    std::map<std::string, int> producer;
    for (int i = 0; i < g.node_size(); ++i) {
      for (const auto& o : g.node(i).output()) producer[o] = i;
    }
    for (const std::string& l : layers) {
      if (!producer.count(l)) throw_bad_input(kWhere, "no layer output named '" + l + "'");
    }
    std::vector<bool> needed(static_cast<size_t>(g.node_size()), false);
    std::vector<std::string> stack(layers.begin(), layers.end());
    while (!stack.empty()) {
      const std::string t = stack.back();
      stack.pop_back();
      auto it = producer.find(t);
      if (it == producer.end() || needed[static_cast<size_t>(it->second)]) continue;
      needed[static_cast<size_t>(it->second)] = true;
      for (const auto& in : g.node(it->second).input()) stack.push_back(in);
    }
    for (int i = 0; i < g.node_size(); ++i) {
      if (needed[static_cast<size_t>(i)]) add(g.node(i));
    }
    for (const std::string& l : layers) outputs.push_back(id(l));
    fuse_activations();
    last_use.assign(static_cast<size_t>(values), -1);
    for (size_t i = 0; i < ops.size(); ++i) {
      for (int v : ops[i].inputs) last_use[static_cast<size_t>(v)] = static_cast<int>(i);
    }
    init_.clear();
  }

  std::vector<int64_t> input_shape;
  std::vector<Op> ops;
  int values = 0;
  std::vector<int> outputs;   // value id per requested layer
  std::vector<int> last_use;  // op index after which a value can go; -1: never read

 private:
  int id(const std::string& name) const {
    auto it = ids_.find(name);
    if (it == ids_.end())
      throw_bad_input(kWhere, "tensor '" + name + "' is used before it is made");
    return it->second;
  }
  const onnx::TensorProto* initializer(const std::string& name) const {
    auto it = init_.find(name);
    return it == init_.end() ? nullptr : it->second;
  }
  const onnx::TensorProto& need_initializer(const onnx::NodeProto& n, int input) const {
    if (n.input_size() <= input || initializer(n.input(input)) == nullptr) {
      unsupported(n, "input " + std::to_string(input) + " is not a constant");
    }
    return *initializer(n.input(input));
  }

  void add(const onnx::NodeProto& n) {
    const std::string& type = n.op_type();
    if (n.output_size() != 1 && !(type == "BatchNormalization" && n.output_size() >= 1)) {
      unsupported(n, "more than one output");
    }
    Op op;
    op.name = n.output(0);
    auto value_input = [&](int i) {
      if (n.input_size() <= i || initializer(n.input(i)) != nullptr) {
        unsupported(n, "input " + std::to_string(i) + " is not a computed tensor");
      }
      op.inputs.push_back(id(n.input(i)));
    };
    if (type == "Conv") {
      op.kind = Kind::conv;
      value_input(0);
      const onnx::TensorProto& w = need_initializer(n, 1);
      if (w.dims_size() != 4) unsupported(n, "only 2-D convolutions");
      op.cout = w.dims(0);
      op.cin_per_group = w.dims(1);
      op.kh = w.dims(2);
      op.kw = w.dims(3);
      op.weight = floats_of(w);
      if (n.input_size() > 2 && !n.input(2).empty()) {
        op.bias = floats_of(need_initializer(n, 2));
        if (static_cast<int64_t>(op.bias.size()) != op.cout) unsupported(n, "bias size");
      }
      const auto ks = ints_attr(n, "kernel_shape", {op.kh, op.kw});
      if (ks != std::vector<int64_t>{op.kh, op.kw}) unsupported(n, "kernel_shape vs weights");
      op.group = int_attr(n, "group", 1);
      if (op.group < 1 || op.cout % op.group != 0) unsupported(n, "bad group");
      window(n, op);
      const auto d = ints_attr(n, "dilations", {1, 1});
      if (d.size() != 2 || d[0] < 1 || d[1] < 1) unsupported(n, "dilations");
      op.dh = d[0];
      op.dw = d[1];
    } else if (type == "MaxPool" || type == "AveragePool") {
      op.kind = type == "MaxPool" ? Kind::max_pool : Kind::avg_pool;
      value_input(0);
      const auto ks = ints_attr(n, "kernel_shape", {});
      if (ks.size() != 2 || ks[0] < 1 || ks[1] < 1) unsupported(n, "kernel_shape");
      op.kh = ks[0];
      op.kw = ks[1];
      window(n, op);
      if (int_attr(n, "ceil_mode", 0) != 0) unsupported(n, "ceil_mode");
      if (ints_attr(n, "dilations", {1, 1}) != std::vector<int64_t>{1, 1}) {
        unsupported(n, "dilations");
      }
      if (int_attr(n, "storage_order", 0) != 0) unsupported(n, "storage_order");
      op.count_include_pad = int_attr(n, "count_include_pad", 0) != 0;
      if (op.pt >= op.kh || op.pb >= op.kh || op.pl >= op.kw || op.pr >= op.kw) {
        unsupported(n, "pads as large as the window");
      }
    } else if (type == "Relu") {
      op.kind = Kind::relu;
      value_input(0);
    } else if (type == "Clip") {
      op.kind = Kind::clip;
      value_input(0);
      op.lo = float_attr(n, "min", std::numeric_limits<float>::lowest());
      op.hi = float_attr(n, "max", std::numeric_limits<float>::max());
      // Opset 11 and later: the bounds are optional constant inputs.
      auto bound = [&](int i, float& out) {
        if (n.input_size() <= i || n.input(i).empty()) return;
        const auto v = floats_of(need_initializer(n, i));
        if (v.size() != 1) unsupported(n, "a bound that is not a scalar");
        out = v[0];
      };
      bound(1, op.lo);
      bound(2, op.hi);
    } else if (type == "Add") {
      op.kind = Kind::add;
      value_input(0);
      value_input(1);
    } else if (type == "Mul") {
      op.kind = Kind::mul;
      if (n.input_size() != 2) unsupported(n, "not two inputs");
      const int c = initializer(n.input(1)) != nullptr ? 1 : 0;
      value_input(1 - c);
      const onnx::TensorProto& t = need_initializer(n, c);
      op.scale = floats_of(t);
      const int d = t.dims_size();
      if (d > 4 || (d == 4 && t.dims(0) != 1)) unsupported(n, "a constant that is not one image's");
      if (d >= 3) op.mul_c = t.dims(d - 3);
      if (d >= 2) op.mul_h = t.dims(d - 2);
      if (d >= 1) op.mul_w = t.dims(d - 1);
    } else if (type == "Concat") {
      op.kind = Kind::concat;
      const int64_t axis = int_attr(n, "axis", 1);
      if (axis != 1 && axis != -3) unsupported(n, "concatenation other than along channels");
      for (int i = 0; i < n.input_size(); ++i) value_input(i);
    } else if (type == "Pad") {
      op.kind = Kind::pad;
      value_input(0);
      if (string_attr(n, "mode", "constant") != "constant") unsupported(n, "mode");
      std::vector<int64_t> p = ints_attr(n, "pads", {});
      op.value = float_attr(n, "value", 0.0f);
      if (n.input_size() > 1) p = int64s_of(need_initializer(n, 1));  // opset 11
      if (n.input_size() > 2 && !n.input(2).empty()) {
        const auto v = floats_of(need_initializer(n, 2));
        if (v.size() != 1) unsupported(n, "a pad value that is not a scalar");
        op.value = v[0];
      }
      if (p.size() != 8 || p[0] != 0 || p[1] != 0 || p[4] != 0 || p[5] != 0) {
        unsupported(n, "pads other than spatial");
      }
      if (*std::min_element(p.begin(), p.end()) < 0) unsupported(n, "negative pads");
      op.pt = p[2];
      op.pl = p[3];
      op.pb = p[6];
      op.pr = p[7];
    } else if (type == "BatchNormalization") {
      op.kind = Kind::scale_shift;
      value_input(0);
      const auto gamma = floats_of(need_initializer(n, 1));
      const auto beta = floats_of(need_initializer(n, 2));
      const auto mean = floats_of(need_initializer(n, 3));
      const auto var = floats_of(need_initializer(n, 4));
      if (beta.size() != gamma.size() || mean.size() != gamma.size() ||
          var.size() != gamma.size()) {
        throw_bad_input(kWhere, "batch normalisation '" + op.name + "' has mismatched sizes");
      }
      const double eps = float_attr(n, "epsilon", 1e-5f);
      for (size_t c = 0; c < gamma.size(); ++c) {
        const double s = gamma[c] / std::sqrt(static_cast<double>(var[c]) + eps);
        op.scale.push_back(static_cast<float>(s));
        op.shift.push_back(static_cast<float>(beta[c] - mean[c] * s));
      }
    } else if (type == "Identity" || type == "Dropout") {
      op.kind = Kind::copy;
      value_input(0);
    } else {
      unsupported(n, "operator not implemented");
    }
    if (ids_.count(op.name)) throw_bad_input(kWhere, "tensor '" + op.name + "' is made twice");
    op.output = values++;
    ids_[op.name] = op.output;
    ops.push_back(std::move(op));
  }

  // strides and explicit pads of a convolution or a pool
  static void window(const onnx::NodeProto& n, Op& op) {
    const std::string auto_pad = string_attr(n, "auto_pad", "NOTSET");
    if (auto_pad != "NOTSET" && auto_pad != "VALID") unsupported(n, "auto_pad " + auto_pad);
    const auto s = ints_attr(n, "strides", {1, 1});
    if (s.size() != 2 || s[0] < 1 || s[1] < 1) unsupported(n, "strides");
    op.sh = s[0];
    op.sw = s[1];
    const auto p = ints_attr(n, "pads", {0, 0, 0, 0});
    if (p.size() != 4 || *std::min_element(p.begin(), p.end()) < 0) unsupported(n, "pads");
    op.pt = p[0];
    op.pl = p[1];
    op.pb = p[2];
    op.pr = p[3];
  }

  // A convolution read only by a Relu or Clip (and not itself an output) applies it in the pass
  // that adds its bias, instead of a separate pass over memory.
  void fuse_activations() {
    std::vector<int> readers(static_cast<size_t>(values), 0);
    for (const Op& op : ops) {
      for (int v : op.inputs) ++readers[static_cast<size_t>(v)];
    }
    for (int v : outputs) readers[static_cast<size_t>(v)] += 2;
    std::vector<int> made_by(static_cast<size_t>(values), -1);
    std::vector<Op> kept;
    for (Op& op : ops) {
      if ((op.kind == Kind::relu || op.kind == Kind::clip) && op.inputs.size() == 1) {
        const int src = op.inputs[0];
        const int p = made_by[static_cast<size_t>(src)];
        const Kind k = p >= 0 ? kept[static_cast<size_t>(p)].kind : Kind::copy;
        if ((k == Kind::conv || k == Kind::add) && kept[static_cast<size_t>(p)].act == Act::none &&
            readers[static_cast<size_t>(src)] == 1) {
          Op& into = kept[static_cast<size_t>(p)];
          into.act = op.kind == Kind::relu ? Act::relu : Act::clip;
          into.lo = op.lo;
          into.hi = op.hi;
          into.output = op.output;
          into.name = op.name;
          made_by[static_cast<size_t>(op.output)] = p;
          continue;
        }
      }
      made_by[static_cast<size_t>(op.output)] = static_cast<int>(kept.size());
      kept.push_back(std::move(op));
    }
    ops = std::move(kept);
  }

  // Into the constructor's ModelProto: only valid while the graph is read (the ops keep copies
  // of what they need, the proto's weights are not kept twice).
  std::map<std::string, const onnx::TensorProto*> init_;
  std::map<std::string, int> ids_;
};
}  // namespace

OpGraph read_op_graph(const std::vector<uint8_t>& bytes, const std::vector<std::string>& layers) {
  Graph g(bytes, layers);
  return OpGraph{std::move(g.input_shape), std::move(g.ops), g.values, std::move(g.outputs),
                 std::move(g.last_use)};
}

int64_t window_out(int64_t in, int64_t k_eff, int64_t s, int64_t pad_begin, int64_t pad_end) {
  const int64_t span = in + pad_begin + pad_end - k_eff;
  return span < 0 ? 0 : span / s + 1;
}

Shape output_shape(const Op& op, const std::vector<Shape>& in) {
  const Shape& x = in[0];
  Shape s{x.c, x.h, x.w};
  auto fail = [&](const std::string& what) {
    throw_bad_input(kWhere, "'" + op.name + "': " + what);
  };
  switch (op.kind) {
    case Kind::conv:
    case Kind::max_pool:
    case Kind::avg_pool: {
      if (op.kind == Kind::conv) {
        if (x.c != op.cin_per_group * op.group) {
          fail("expects " + std::to_string(op.cin_per_group * op.group) + " channels, gets " +
               std::to_string(x.c));
        }
        s.c = op.cout;
      }
      s.h = window_out(x.h, op.dh * (op.kh - 1) + 1, op.sh, op.pt, op.pb);
      s.w = window_out(x.w, op.dw * (op.kw - 1) + 1, op.sw, op.pl, op.pr);
      if (s.h < 1 || s.w < 1) fail("the input is smaller than the window (image size too small)");
      break;
    }
    case Kind::add:
      if (in[1].c != x.c || in[1].h != x.h || in[1].w != x.w) fail("adds different shapes");
      break;
    case Kind::mul: {
      // scalar, per channel [C, 1, 1] or per element [C, H, W]: what the graphs here use
      const bool scalar = op.mul_c == 1 && op.mul_h == 1 && op.mul_w == 1;
      const bool channel = op.mul_c == x.c && op.mul_h == 1 && op.mul_w == 1;
      const bool element = op.mul_c == x.c && op.mul_h == x.h && op.mul_w == x.w;
      if (!scalar && !channel && !element) fail("constant does not broadcast");
      break;
    }
    case Kind::scale_shift:
      if (static_cast<int64_t>(op.scale.size()) != x.c) fail("channel count");
      break;
    case Kind::concat:
      s.c = 0;
      for (const Shape& b : in) {
        if (b.h != x.h || b.w != x.w) fail("concatenates maps of different sizes");
        s.c += b.c;
      }
      break;
    case Kind::pad:
      s.h = x.h + op.pt + op.pb;
      s.w = x.w + op.pl + op.pr;
      break;
    case Kind::relu:
    case Kind::clip:
    case Kind::copy:
      break;
  }
  return s;
}

std::vector<Shape> value_shapes(const OpGraph& g, int64_t c, int64_t h, int64_t w) {
  std::vector<Shape> shapes(static_cast<size_t>(g.values));
  shapes[0] = {c, h, w};
  for (const Op& op : g.ops) {
    std::vector<Shape> in;
    for (int id : op.inputs) in.push_back(shapes[static_cast<size_t>(id)]);
    shapes[static_cast<size_t>(op.output)] = output_shape(op, in);
  }
  return shapes;
}

double conv_flops(const OpGraph& g, int64_t h, int64_t w) {
  const std::vector<Shape> shapes =
      value_shapes(g, g.input_shape[1] > 0 ? g.input_shape[1] : 3, h, w);
  double flops = 0;
  for (const Op& op : g.ops) {
    if (op.kind != Kind::conv) continue;
    const Shape& s = shapes[static_cast<size_t>(op.output)];
    flops += 2.0 * static_cast<double>(s.c * s.h * s.w) *
             static_cast<double>(op.cin_per_group * op.kh * op.kw);
  }
  return flops;
}

}  // namespace patchcore
