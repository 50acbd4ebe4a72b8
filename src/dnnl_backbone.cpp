// The oneDNN engine: the operators of backbone_ops.h as oneDNN primitives, built once per input
// shape and thread count and then only executed. Activations stay NHWC (oneDNN's direct
// convolution kernels want channels last) from the input's reorder to the feature outputs',
// in fp32 or bf16; ReLU / Clip after a convolution or an addition are post-ops of it
// (backbone_ops.cpp fuses them), zero pads read only by convolutions become the convolutions'
// own padding.

#include <omp.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <functional>
#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>

#include "backbone.h"
#include "backbone_ops.h"
#include "error.h"
#include "omp_threads.h"
#include "onnx_graph.h"

namespace patchcore {

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// A zero Pad read only by convolutions becomes their padding (Keras' ZeroPadding2D before a
// 'valid' convolution): one pass over memory less.
void fold_pads(OpGraph& g) {
  std::vector<bool> read_by_non_conv(static_cast<size_t>(g.values), false);
  for (const Op& op : g.ops) {
    for (int v : op.inputs) {
      if (op.kind != Kind::conv) read_by_non_conv[static_cast<size_t>(v)] = true;
    }
  }
  for (int v : g.outputs) read_by_non_conv[static_cast<size_t>(v)] = true;
  std::vector<Op> kept;
  for (Op& op : g.ops) {
    if (op.kind == Kind::pad && op.value == 0.0f &&
        !read_by_non_conv[static_cast<size_t>(op.output)]) {
      for (Op& later : g.ops) {  // the readers come later, not yet moved into `kept`
        if (later.kind != Kind::conv || later.inputs.empty() || later.inputs[0] != op.output) {
          continue;
        }
        later.inputs[0] = op.inputs[0];
        later.pt += op.pt;
        later.pl += op.pl;
        later.pb += op.pb;
        later.pr += op.pr;
      }
      continue;  // nothing reads it any more
    }
    kept.push_back(std::move(op));
  }
  g.ops = std::move(kept);
  g.last_use.assign(static_cast<size_t>(g.values), -1);
  for (size_t i = 0; i < g.ops.size(); ++i) {
    for (int v : g.ops[i].inputs) g.last_use[static_cast<size_t>(v)] = static_cast<int>(i);
  }
}

dnnl::post_ops activation_post_op(const Op& op) {
  dnnl::post_ops po;
  if (op.act == Act::relu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  if (op.act == Act::clip) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_clip, op.lo, op.hi);
  return po;
}

uint16_t to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// What one input shape runs: the primitives in order with their arguments, and the buffers.
struct Plan {
  struct Step {
    dnnl::primitive prim;
    std::unordered_map<int, memory> args;
    std::function<void()> fn;  // instead of a primitive (a pad's fill)
  };
  std::vector<Step> steps;
  memory input;                 // the caller's NCHW fp32 batch (handle set at each call)
  std::vector<memory> outputs;  // the caller's NCHW fp32 feature maps, per layer
  std::vector<std::shared_ptr<void>> buffers;
  std::vector<memory> weights;  // reordered once, kept alive by the steps too
};

// Activation buffers handed out while a plan is built, in the order the steps will run: a
// buffer whose value has been read for the last time goes to the next value that fits.
class Arena {
 public:
  explicit Arena(Plan& plan) : plan_(plan) {}
  void* acquire(size_t bytes) {
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->first >= bytes && (best == free_.end() || it->first < best->first)) best = it;
    }
    if (best != free_.end()) {
      void* p = best->second;
      sizes_[p] = best->first;
      free_.erase(best);
      return p;
    }
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, std::max<size_t>(rounded, 64));
    if (p == nullptr) throw std::bad_alloc();
    plan_.buffers.emplace_back(p, std::free);
    sizes_[p] = rounded;
    return p;
  }
  void release(void* p) {
    auto it = sizes_.find(p);
    PATCHCORE_ASSERT(it != sizes_.end());
    free_.emplace_back(it->second, p);
    sizes_.erase(it);
  }

 private:
  Plan& plan_;
  std::vector<std::pair<size_t, void*>> free_;
  std::map<void*, size_t> sizes_;
};

class DnnlBackbone : public Backbone {
 public:
  DnnlBackbone(const std::vector<uint8_t>& onnx, const std::vector<std::string>& layers,
               int threads, bool bf16)
      : graph_(read_op_graph(onnx, layers)),
        layers_(layers),
        threads_(threads),
        act_(bf16 ? dt::bf16 : dt::f32),
        engine_(dnnl::engine::kind::cpu, 0),
        stream_(engine_) {
    fold_pads(graph_);
    // Built now when the graph fixes the size, so that an operator oneDNN lacks shows at once.
    const auto& s = graph_.input_shape;
    if (s[1] > 0 && s[2] > 0 && s[3] > 0) plan_for(1, s[1], s[2], s[3]);
  }

  // One image per execution of the N = 1 plan: each image's features then do not depend on the
  // batch (oneDNN may pick other kernels for other N), and the layers share the threads.
  std::vector<Tensor> forward(const Tensor& batch) override {
    check_batch_shape(graph_.input_shape, batch);
    const int64_t n = batch.shape[0], c = batch.shape[1], h = batch.shape[2], w = batch.shape[3];
    OmpThreadsGuard omp_guard(threads_);
    Plan& plan = plan_for(1, c, h, w);
    std::vector<Tensor> out(layers_.size());
    for (size_t k = 0; k < layers_.size(); ++k) {
      const memory::dims d = plan.outputs[k].get_desc().dims();
      out[k] = Tensor({n, d[1], d[2], d[3]});
    }
    const int64_t per_image = c * h * w;
    for (int64_t i = 0; i < n; ++i) {
      plan.input.set_data_handle(const_cast<float*>(batch.ptr() + i * per_image));
      for (size_t k = 0; k < layers_.size(); ++k) {
        const int64_t per = out[k].numel() / n;
        plan.outputs[k].set_data_handle(out[k].ptr() + i * per);
      }
      for (Plan::Step& step : plan.steps) {
        if (step.fn) {
          step.fn();
        } else {
          step.prim.execute(stream_, step.args);
        }
      }
      stream_.wait();
    }
    return out;
  }

  const std::vector<std::string>& layers() const override { return layers_; }
  double flops_per_image(int height, int width) override {
    return conv_flops(graph_, height, width);
  }
  std::string engine() const override { return "dnnl"; }
  std::string precision() const override { return act_ == dt::bf16 ? "bf16" : "fp32"; }

 private:
  Plan& plan_for(int64_t n, int64_t c, int64_t h, int64_t w) {
    const std::array<int64_t, 5> key{n, c, h, w, omp_get_max_threads()};
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Plan plan;
    build(plan, n, c, h, w);
    return plans_.emplace(key, std::move(plan)).first->second;
  }

  memory::desc act_md(int64_t n, const Shape& s) const {
    return memory::desc({n, s.c, s.h, s.w}, act_, tag::nhwc);
  }

  void build(Plan& plan, int64_t n, int64_t c, int64_t h, int64_t w) {
    const std::vector<Shape> shapes = value_shapes(graph_, c, h, w);
    Arena arena(plan);
    std::vector<memory> values(static_cast<size_t>(graph_.values));
    auto make = [&](int v) -> memory& {
      const memory::desc md = act_md(n, shapes[static_cast<size_t>(v)]);
      values[static_cast<size_t>(v)] = memory(md, engine_, arena.acquire(md.get_size()));
      return values[static_cast<size_t>(v)];
    };
    // The feature outputs: reordered to the caller's NCHW fp32 as soon as they are made.
    plan.outputs.resize(layers_.size());
    auto deliver = [&](int v) {
      for (size_t k = 0; k < layers_.size(); ++k) {
        if (graph_.outputs[k] != v) continue;
        const Shape& s = shapes[static_cast<size_t>(v)];
        plan.outputs[k] = memory({{n, s.c, s.h, s.w}, dt::f32, tag::nchw}, engine_, nullptr);
        add_reorder(plan, values[static_cast<size_t>(v)], plan.outputs[k]);
      }
    };
    plan.input = memory({{n, c, h, w}, dt::f32, tag::nchw}, engine_, nullptr);
    add_reorder(plan, plan.input, make(0));
    deliver(0);
    for (size_t o = 0; o < graph_.ops.size(); ++o) {
      const Op& op = graph_.ops[o];
      std::vector<memory> in;
      for (int v : op.inputs) in.push_back(values[static_cast<size_t>(v)]);
      const memory& y = make(op.output);
      try {
        add_step(plan, arena, op, in, y);
      } catch (const dnnl::error& e) {
        throw Unsupported("node '" + op.name + "': oneDNN cannot run it (" + e.what() + ")");
      }
      deliver(op.output);
      for (int v : op.inputs) {
        if (graph_.last_use[static_cast<size_t>(v)] == static_cast<int>(o)) {
          arena.release(values[static_cast<size_t>(v)].get_data_handle());
        }
      }
      if (graph_.last_use[static_cast<size_t>(op.output)] < 0) arena.release(y.get_data_handle());
    }
  }

  void add_reorder(Plan& plan, const memory& from, const memory& to) {
    plan.steps.push_back({dnnl::reorder(from, to), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}}, {}});
  }

  // A constant [1, C, h, w] (or [1, C, 1, 1]) fp32 operand, kept by the plan.
  memory constant(Plan& plan, const std::vector<float>& values, const memory::dims& dims) {
    auto copy = std::make_shared<std::vector<float>>(values);
    plan.buffers.push_back(copy);
    return memory({dims, dt::f32, dims.size() == 1 ? tag::a : tag::nchw}, engine_, copy->data());
  }

  // A constant operand reordered once to NHWC fp32.
  memory to_nhwc(Plan& plan, const memory& m) {
    memory out({m.get_desc().dims(), dt::f32, tag::nhwc}, engine_);
    memory src = m;
    dnnl::reorder(src, out).execute(stream_, src, out);
    stream_.wait();
    plan.weights.push_back(out);
    return out;
  }

  void add_step(Plan& plan, Arena& arena, const Op& op, const std::vector<memory>& in,
                const memory& y) {
    const memory::desc x_md = in[0].get_desc(), y_md = y.get_desc();
    const memory::dims xd = x_md.dims();
    const int64_t channels = xd[1];
    switch (op.kind) {
      case Kind::conv:
        add_conv(plan, arena, op, in[0], y);
        return;
      case Kind::max_pool:
      case Kind::avg_pool: {
        const auto alg = op.kind == Kind::max_pool ? dnnl::algorithm::pooling_max
                         : op.count_include_pad    ? dnnl::algorithm::pooling_avg_include_padding
                                                   : dnnl::algorithm::pooling_avg_exclude_padding;
        const dnnl::pooling_forward::desc d(dnnl::prop_kind::forward_inference, alg, x_md, y_md,
                                            {op.sh, op.sw}, {op.kh, op.kw}, {op.pt, op.pl},
                                            {op.pb, op.pr});
        const dnnl::pooling_forward::primitive_desc pd(d, engine_);
        plan.steps.push_back(
            {dnnl::pooling_forward(pd), {{DNNL_ARG_SRC, in[0]}, {DNNL_ARG_DST, y}}, {}});
        return;
      }
      case Kind::relu:
      case Kind::clip: {
        const bool relu = op.kind == Kind::relu;
        const dnnl::eltwise_forward::desc d(
            dnnl::prop_kind::forward_inference,
            relu ? dnnl::algorithm::eltwise_relu : dnnl::algorithm::eltwise_clip, x_md,
            relu ? 0.0f : op.lo, relu ? 0.0f : op.hi);
        const dnnl::eltwise_forward::primitive_desc pd(d, engine_);
        plan.steps.push_back(
            {dnnl::eltwise_forward(pd), {{DNNL_ARG_SRC, in[0]}, {DNNL_ARG_DST, y}}, {}});
        return;
      }
      case Kind::add: {
        dnnl::primitive_attr attr;
        attr.set_post_ops(activation_post_op(op));
        const dnnl::binary::desc d(dnnl::algorithm::binary_add, x_md, in[1].get_desc(), y_md);
        const dnnl::binary::primitive_desc pd(d, attr, engine_);
        plan.steps.push_back({dnnl::binary(pd),
                              {{DNNL_ARG_SRC_0, in[0]}, {DNNL_ARG_SRC_1, in[1]}, {DNNL_ARG_DST, y}},
                              {}});
        return;
      }
      case Kind::mul: {
        if (op.mul_c == 1 && op.mul_h == 1 && op.mul_w == 1) {  // a scalar: y = s x
          const dnnl::eltwise_forward::desc d(dnnl::prop_kind::forward_inference,
                                              dnnl::algorithm::eltwise_linear, x_md, op.scale[0],
                                              0.0f);
          const dnnl::eltwise_forward::primitive_desc pd(d, engine_);
          plan.steps.push_back(
              {dnnl::eltwise_forward(pd), {{DNNL_ARG_SRC, in[0]}, {DNNL_ARG_DST, y}}, {}});
          return;
        }
        // In the activations' layout: oneDNN 2.6's bf16 binary kernel multiplied an NHWC map
        // by an NCHW operand wrongly (a 9 % error on an average pool's border correction).
        const memory k = to_nhwc(plan, constant(plan, op.scale, {1, op.mul_c, op.mul_h, op.mul_w}));
        const dnnl::binary::desc d(dnnl::algorithm::binary_mul, x_md, k.get_desc(), y_md);
        const dnnl::binary::primitive_desc pd(d, engine_);
        plan.steps.push_back({dnnl::binary(pd),
                              {{DNNL_ARG_SRC_0, in[0]}, {DNNL_ARG_SRC_1, k}, {DNNL_ARG_DST, y}},
                              {}});
        return;
      }
      case Kind::scale_shift: {  // y = x * scale + shift, per channel
        const memory scale = constant(plan, op.scale, {1, channels, 1, 1});
        const memory shift = constant(plan, op.shift, {1, channels, 1, 1});
        dnnl::post_ops po;
        po.append_binary(dnnl::algorithm::binary_add, shift.get_desc());
        dnnl::primitive_attr attr;
        attr.set_post_ops(po);
        const dnnl::binary::desc d(dnnl::algorithm::binary_mul, x_md, scale.get_desc(), y_md);
        const dnnl::binary::primitive_desc pd(d, attr, engine_);
        plan.steps.push_back({dnnl::binary(pd),
                              {{DNNL_ARG_SRC_0, in[0]},
                               {DNNL_ARG_SRC_1, scale},
                               {DNNL_ARG_DST, y},
                               {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, shift}},
                              {}});
        return;
      }
      case Kind::concat: {
        std::vector<memory::desc> mds;
        std::unordered_map<int, memory> args{{DNNL_ARG_DST, y}};
        for (size_t i = 0; i < in.size(); ++i) {
          mds.push_back(in[i].get_desc());
          args[DNNL_ARG_MULTIPLE_SRC + static_cast<int>(i)] = in[i];
        }
        const dnnl::concat::primitive_desc pd(y_md, 1, mds, engine_);
        plan.steps.push_back({dnnl::concat(pd), std::move(args), {}});
        return;
      }
      case Kind::pad: {  // fill, then the input into the window of the output
        const memory::dims yd = y_md.dims();
        const memory inner(y_md.submemory_desc(xd, {0, 0, op.pt, op.pl}), engine_,
                           y.get_data_handle());
        const size_t count = static_cast<size_t>(y_md.get_size()) / memory::data_type_size(act_);
        void* data = y.get_data_handle();
        const bool bf16 = act_ == dt::bf16;
        const float value = op.value;
        plan.steps.push_back({{}, {}, [data, count, bf16, value] {
                                if (bf16) {
                                  std::fill_n(static_cast<uint16_t*>(data), count, to_bf16(value));
                                } else {
                                  std::fill_n(static_cast<float*>(data), count, value);
                                }
                              }});
        add_reorder(plan, in[0], inner);
        return;
      }
      case Kind::copy:
        add_reorder(plan, in[0], y);
        return;
    }
  }

  void add_conv(Plan& plan, Arena& arena, const Op& op, const memory& x, const memory& y) {
    const memory::desc x_md = x.get_desc(), y_md = y.get_desc();
    const int64_t cin_g = op.cin_per_group, cout_g = op.cout / op.group;
    const memory::dims wd = op.group == 1 ? memory::dims{op.cout, cin_g, op.kh, op.kw}
                                          : memory::dims{op.group, cout_g, cin_g, op.kh, op.kw};
    const memory::desc w_any(wd, act_, tag::any);
    const memory::desc b_md =
        op.bias.empty() ? memory::desc() : memory::desc({op.cout}, dt::f32, tag::a);
    dnnl::primitive_attr attr;
    attr.set_post_ops(activation_post_op(op));
    // fp32 3 x 3 convolutions of stride 1 by oneDNN's Winograd kernels where it has them
    // (AVX-512; elsewhere the descriptor fails and the direct kernel runs): they take NCHW16c
    // maps, reordered around each, and still win (InceptionV3 at 299 and WideResNet-50 at 224:
    // docs/benchmarks.md). They are within 1e-6 of the direct ones there, within the engine's
    // 1e-5 bar. oneDNN's convolution_auto never picks them, so they are asked for.
    const bool wino = act_ == dt::f32 && op.kh == 3 && op.kw == 3 && op.sh == 1 && op.sw == 1 &&
                      op.dh == 1 && op.dw == 1 && op.group == 1;
    if (wino) {
      try {
        const memory::desc x_any(x_md.dims(), act_, tag::any), y_any(y_md.dims(), act_, tag::any);
        const dnnl::convolution_forward::desc dw(
            dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_winograd, x_any, w_any,
            b_md, y_any, {op.sh, op.sw}, {op.pt, op.pl}, {op.pb, op.pr});
        const dnnl::convolution_forward::primitive_desc pdw(dw, attr, engine_);
        memory xin = x, yout = y;
        if (pdw.src_desc() != x_md) {
          xin = memory(pdw.src_desc(), engine_, arena.acquire(pdw.src_desc().get_size()));
          add_reorder(plan, x, xin);
        }
        if (pdw.dst_desc() != y_md) {
          yout = memory(pdw.dst_desc(), engine_, arena.acquire(pdw.dst_desc().get_size()));
        }
        memory user_w({wd, dt::f32, tag::oihw}, engine_, const_cast<float*>(op.weight.data()));
        memory weights(pdw.weights_desc(), engine_);
        dnnl::reorder(user_w, weights).execute(stream_, user_w, weights);
        stream_.wait();
        plan.weights.push_back(weights);
        std::unordered_map<int, memory> args{
            {DNNL_ARG_SRC, xin}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, yout}};
        if (!op.bias.empty()) args[DNNL_ARG_BIAS] = constant(plan, op.bias, {op.cout});
        plan.steps.push_back({dnnl::convolution_forward(pdw), std::move(args), {}});
        if (pdw.dst_desc() != y_md) {
          add_reorder(plan, yout, y);
          arena.release(yout.get_data_handle());
        }
        if (pdw.src_desc() != x_md) arena.release(xin.get_data_handle());
        return;
      } catch (const dnnl::error&) {
      }
    }
    const dnnl::convolution_forward::desc d(
        dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, x_md, w_any, b_md,
        y_md, {op.sh, op.sw}, {op.dh - 1, op.dw - 1}, {op.pt, op.pl}, {op.pb, op.pr});
    const dnnl::convolution_forward::primitive_desc pd(d, attr, engine_);
    memory user_w({wd, dt::f32, op.group == 1 ? tag::oihw : tag::goihw}, engine_,
                  const_cast<float*>(op.weight.data()));
    memory weights(pd.weights_desc(), engine_);
    dnnl::reorder(user_w, weights).execute(stream_, user_w, weights);
    stream_.wait();
    plan.weights.push_back(weights);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, y}};
    if (!op.bias.empty()) {
      args[DNNL_ARG_BIAS] = constant(plan, op.bias, {op.cout});
    }
    plan.steps.push_back({dnnl::convolution_forward(pd), std::move(args), {}});
  }

  OpGraph graph_;
  std::vector<std::string> layers_;
  int threads_;
  dt act_;
  dnnl::engine engine_;
  dnnl::stream stream_;
  std::map<std::array<int64_t, 5>, Plan> plans_;
};

}  // namespace

std::unique_ptr<Backbone> try_dnnl_backbone(const std::vector<uint8_t>& onnx,
                                            const std::vector<std::string>& layers, int threads,
                                            bool bf16, std::string* why) {
  try {
    return std::make_unique<DnnlBackbone>(onnx, layers, threads, bf16);
  } catch (const Unsupported& e) {
    if (why != nullptr) *why = e.what();
    return nullptr;
  }
}

}  // namespace patchcore
