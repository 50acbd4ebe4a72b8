#include "torchvision_import.h"

#include <onnx/onnx_pb.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "error.h"
#include "sha256.h"

namespace patchcore {

namespace fs = std::filesystem;

std::optional<ResNetSpec> torchvision_arch(const std::string& name) {
  ResNetSpec s;
  s.name = name;
  if (name == "resnet18") {
    s.blocks = {2, 2, 2, 2};
  } else if (name == "resnet34") {
    s.blocks = {3, 4, 6, 3};
  } else if (name == "resnet50" || name == "wide_resnet50_2") {
    s.bottleneck = true;
    s.blocks = {3, 4, 6, 3};
  } else if (name == "resnet101" || name == "wide_resnet101_2") {
    s.bottleneck = true;
    s.blocks = {3, 4, 23, 3};
  } else if (name == "resnet152") {
    s.bottleneck = true;
    s.blocks = {3, 8, 36, 3};
  } else {
    return std::nullopt;
  }
  if (name.rfind("wide_", 0) == 0) s.width_per_group = 128;
  return s;
}

std::vector<std::string> torchvision_arch_names() {
  return {"resnet18",  "resnet34",        "resnet50",        "resnet101",
          "resnet152", "wide_resnet50_2", "wide_resnet101_2"};
}

namespace {

constexpr double kBnEps = 1e-5;  // torch.nn.BatchNorm2d's default, used by torchvision

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// One convolution followed by its BatchNorm, as torchvision names them.
struct ConvBn {
  std::string conv, bn;  // module prefixes, e.g. "layer1.0.conv1", "layer1.0.bn1"
  int64_t cin = 0, cout = 0, kernel = 1, stride = 1, pad = 0;
  int layer = 0;  // 0 for the stem
};

struct Block {
  std::string name;  // "layer1.0"
  int layer = 1;
  std::vector<ConvBn> path;  // main path; ReLU after each but the last
  std::optional<ConvBn> downsample;
};

// The architecture as a list of convolutions, in graph order.
struct Plan {
  ConvBn stem;
  std::vector<Block> blocks;
};

Plan make_plan(const ResNetSpec& spec) {
  Plan plan;
  plan.stem = ConvBn{"conv1", "bn1", 3, spec.stem_width, 7, 2, 3, 0};
  const int64_t expansion = spec.bottleneck ? 4 : 1;
  int64_t inplanes = spec.stem_width;
  for (int l = 0; l < 4; ++l) {
    const int64_t planes = spec.planes[l];
    for (int b = 0; b < spec.blocks[l]; ++b) {
      Block blk;
      blk.layer = l + 1;
      blk.name = "layer" + std::to_string(l + 1) + "." + std::to_string(b);
      const int64_t stride = (b == 0 && l > 0) ? 2 : 1;
      const std::string p = blk.name + ".";
      if (spec.bottleneck) {
        const int64_t width = planes * spec.width_per_group / 64;
        blk.path = {ConvBn{p + "conv1", p + "bn1", inplanes, width, 1, 1, 0, l + 1},
                    ConvBn{p + "conv2", p + "bn2", width, width, 3, stride, 1, l + 1},
                    ConvBn{p + "conv3", p + "bn3", width, planes * expansion, 1, 1, 0, l + 1}};
      } else {
        blk.path = {ConvBn{p + "conv1", p + "bn1", inplanes, planes, 3, stride, 1, l + 1},
                    ConvBn{p + "conv2", p + "bn2", planes, planes, 3, 1, 1, l + 1}};
      }
      if (b == 0 && (stride != 1 || inplanes != planes * expansion)) {
        blk.downsample = ConvBn{p + "downsample.0",
                                p + "downsample.1",
                                inplanes,
                                planes * expansion,
                                1,
                                stride,
                                0,
                                l + 1};
      }
      inplanes = planes * expansion;
      plan.blocks.push_back(std::move(blk));
    }
  }
  return plan;
}

// Every tensor name -> shape the architecture has, per convolution.
void expected_tensors(const ConvBn& c, std::map<std::string, std::vector<int64_t>>& out) {
  out[c.conv + ".weight"] = {c.cout, c.cin, c.kernel, c.kernel};
  for (const char* k : {".weight", ".bias", ".running_mean", ".running_var"}) {
    out[c.bn + k] = {c.cout};
  }
}

class GraphWriter {
 public:
  GraphWriter(const StateDict& weights, onnx::GraphProto* g) : w_(weights), g_(g) {}

  std::string conv_bn(const ConvBn& c, const std::string& in, const std::string& out) {
    const Tensor& kernel = w_.at(c.conv + ".weight");
    const Tensor& gamma = w_.at(c.bn + ".weight");
    const Tensor& beta = w_.at(c.bn + ".bias");
    const Tensor& mean = w_.at(c.bn + ".running_mean");
    const Tensor& var = w_.at(c.bn + ".running_var");
    const int64_t per_out = c.cin * c.kernel * c.kernel;
    std::vector<float> wf(kernel.data.size()), bf(static_cast<size_t>(c.cout));
    for (int64_t o = 0; o < c.cout; ++o) {
      const double scale = gamma.data[o] / std::sqrt(static_cast<double>(var.data[o]) + kBnEps);
      for (int64_t i = 0; i < per_out; ++i) {
        wf[o * per_out + i] = static_cast<float>(kernel.data[o * per_out + i] * scale);
      }
      bf[o] = static_cast<float>(beta.data[o] - mean.data[o] * scale);
    }
    const std::string wname =
        initializer(c.conv + ".weight", {c.cout, c.cin, c.kernel, c.kernel}, wf);
    const std::string bname = initializer(c.conv + ".bias", {c.cout}, bf);
    onnx::NodeProto* n = node("Conv", {in, wname, bname}, out);
    ints(n, "kernel_shape", {c.kernel, c.kernel});
    ints(n, "strides", {c.stride, c.stride});
    ints(n, "pads", {c.pad, c.pad, c.pad, c.pad});
    ints(n, "dilations", {1, 1});
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name("group");
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(1);
    return out;
  }

  onnx::NodeProto* node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::string& output) {
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(op);
    n->set_name(output);
    for (const std::string& i : inputs) n->add_input(i);
    n->add_output(output);
    return n;
  }

  static void ints(onnx::NodeProto* n, const char* name, const std::vector<int64_t>& values) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t v : values) a->add_ints(v);
  }

 private:
  std::string initializer(const std::string& name, const std::vector<int64_t>& dims,
                          const std::vector<float>& values) {
    onnx::TensorProto* t = g_->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->add_dims(d);
    t->set_raw_data(values.data(), values.size() * sizeof(float));
    return name;
  }

  const StateDict& w_;
  onnx::GraphProto* g_;
};

void add_value_info(onnx::ValueInfoProto* v, const std::string& name, int64_t channels,
                    const std::string& h, const std::string& w) {
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  auto* shape = tt->mutable_shape();
  shape->add_dim()->set_dim_value(1);
  shape->add_dim()->set_dim_value(channels);
  shape->add_dim()->set_dim_param(h);
  shape->add_dim()->set_dim_param(w);
}

void check_weights(const ResNetSpec& spec, const Plan& plan, const StateDict& weights,
                   int last_layer, const std::string& where) {
  std::map<std::string, std::vector<int64_t>> all, needed;
  expected_tensors(plan.stem, all);
  expected_tensors(plan.stem, needed);
  for (const Block& b : plan.blocks) {
    for (const ConvBn& c : b.path) {
      expected_tensors(c, all);
      if (b.layer <= last_layer) expected_tensors(c, needed);
    }
    if (b.downsample) {
      expected_tensors(*b.downsample, all);
      if (b.layer <= last_layer) expected_tensors(*b.downsample, needed);
    }
  }
  auto ignorable = [&](const std::string& k) {
    const std::string suffix = ".num_batches_tracked";
    if (k.size() > suffix.size() && k.compare(k.size() - suffix.size(), suffix.size(), suffix) == 0)
      return all.count(k.substr(0, k.size() - suffix.size()) + ".running_mean") > 0;
    return k == "fc.weight" || k == "fc.bias";
  };
  std::vector<std::string> missing, extra, misshaped;
  for (const auto& [name, shape] : needed) {
    auto it = weights.find(name);
    if (it == weights.end()) {
      missing.push_back(name);
    } else if (it->second.shape != shape) {
      misshaped.push_back(name + " is " + shape_str(it->second.shape) + ", " + spec.name +
                          " needs " + shape_str(shape));
    }
  }
  for (const auto& [name, t] : weights) {
    if (!all.count(name) && !ignorable(name)) extra.push_back(name);
  }
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? "; " : "") + v[i];
    if (v.size() > 8) s += "; ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  std::string problems;
  if (!missing.empty()) problems += " missing tensors: " + list(missing) + ".";
  if (!misshaped.empty()) problems += " mis-shaped tensors: " + list(misshaped) + ".";
  if (!extra.empty()) problems += " tensors " + spec.name + " does not have: " + list(extra) + ".";
  if (!problems.empty()) {
    throw_bad_input(where, "not a torchvision " + spec.name + " state_dict:" + problems);
  }
}

}  // namespace

std::map<std::string, std::vector<int64_t>> resnet_tensor_shapes(const ResNetSpec& spec) {
  const Plan plan = make_plan(spec);
  std::map<std::string, std::vector<int64_t>> all;
  expected_tensors(plan.stem, all);
  for (const Block& b : plan.blocks) {
    for (const ConvBn& c : b.path) expected_tensors(c, all);
    if (b.downsample) expected_tensors(*b.downsample, all);
  }
  return all;
}

std::vector<uint8_t> resnet_to_onnx(const ResNetSpec& spec, const StateDict& weights,
                                    int last_layer, const std::string& source,
                                    const std::string& where) {
  if (last_layer < 1 || last_layer > 4) {
    throw_usage("last layer must be 1..4, got " + std::to_string(last_layer));
  }
  const Plan plan = make_plan(spec);
  check_weights(spec, plan, weights, last_layer, where);

  onnx::ModelProto proto;
  proto.set_ir_version(5);  // matches opset 10
  proto.set_producer_name("patchcore torchvision_import");
  proto.add_opset_import()->set_version(10);
  for (const auto& [k, v] :
       std::vector<std::pair<std::string, std::string>>{{"patchcore.layers", "layer2,layer3"},
                                                        {"patchcore.normalization", "imagenet"},
                                                        {"patchcore.image_size", "224"},
                                                        {"patchcore.source", source}}) {
    onnx::StringStringEntryProto* e = proto.add_metadata_props();
    e->set_key(k);
    e->set_value(v);
  }
  onnx::GraphProto* g = proto.mutable_graph();
  g->set_name(spec.name);
  add_value_info(g->add_input(), "input", 3, "height", "width");

  GraphWriter w(weights, g);
  w.conv_bn(plan.stem, "input", "bn1");
  w.node("Relu", {"bn1"}, "relu");
  onnx::NodeProto* pool = w.node("MaxPool", {"relu"}, "maxpool");
  GraphWriter::ints(pool, "kernel_shape", {3, 3});
  GraphWriter::ints(pool, "strides", {2, 2});
  GraphWriter::ints(pool, "pads", {1, 1, 1, 1});

  // OpenCV 4.6 can return graph outputs only, so every tensor meant to be requestable is one.
  add_value_info(g->add_output(), "maxpool", spec.stem_width, "maxpool_height", "maxpool_width");
  std::string x = "maxpool";
  for (size_t i = 0; i < plan.blocks.size(); ++i) {
    const Block& b = plan.blocks[i];
    if (b.layer > last_layer) break;
    const std::string p = b.name + ".";
    std::string y = x;
    for (size_t k = 0; k < b.path.size(); ++k) {
      y = w.conv_bn(b.path[k], y, b.path[k].bn);
      if (k + 1 < b.path.size()) {
        y = w.node("Relu", {y}, p + "relu" + std::to_string(k + 1))->output(0);
      }
    }
    const std::string identity = b.downsample ? w.conv_bn(*b.downsample, x, p + "downsample") : x;
    w.node("Add", {y, identity}, p + "add");
    const bool last_of_layer = i + 1 == plan.blocks.size() || plan.blocks[i + 1].layer != b.layer;
    x = last_of_layer ? "layer" + std::to_string(b.layer) : b.name;
    w.node("Relu", {p + "add"}, x);
    add_value_info(g->add_output(), x, b.path.back().cout, x + "_height", x + "_width");
  }

  std::string bytes;
  if (!proto.SerializeToString(&bytes)) throw_bad_input(where, "the ONNX graph is too large");
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

std::string import_torchvision(const std::string& arch, const fs::path& weights_file,
                               const fs::path& out, int last_layer) {
  const auto spec = torchvision_arch(arch);
  if (!spec) {
    std::string names;
    for (const std::string& n : torchvision_arch_names()) names += (names.empty() ? "" : ", ") + n;
    throw_usage("unknown torchvision architecture '" + arch + "' (known: " + names + ")");
  }
  if (last_layer < 1 || last_layer > 4) {
    throw_usage("last layer must be 1..4, got " + std::to_string(last_layer));
  }
  std::string bytes;
  {
    std::error_code ec;
    if (!fs::is_regular_file(weights_file, ec))
      throw_bad_input(weights_file.string(), "no such file");
    std::ifstream in(weights_file, std::ios::binary);
    if (!in) throw_bad_input(weights_file.string(), "cannot open the file");
    std::ostringstream s;
    s << in.rdbuf();
    if (in.bad()) throw_bad_input(weights_file.string(), "read error");
    bytes = s.str();
  }
  const StateDict weights = parse_torch_state_dict(bytes, weights_file.string());
  const std::string source =
      "torchvision:" + arch + ":sha256:" + sha256_hex(bytes.data(), bytes.size());
  bytes.clear();
  bytes.shrink_to_fit();
  const std::vector<uint8_t> onnx =
      resnet_to_onnx(*spec, weights, last_layer, source, weights_file.string());

  const fs::path tmp = out.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw_bad_input(tmp.string(), "cannot create the file");
    f.write(reinterpret_cast<const char*>(onnx.data()), static_cast<std::streamsize>(onnx.size()));
    f.close();
    if (!f) throw_bad_input(tmp.string(), "write error (disk full?)");
  }
  std::error_code ec;
  fs::rename(tmp, out, ec);
  if (ec) throw_bad_input(out.string(), "cannot rename the temporary file: " + ec.message());
  return source;
}

}  // namespace patchcore
