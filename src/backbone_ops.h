// The ONNX graph of a backbone read into the operators the oneDNN engine (dnnl_backbone.cpp)
// runs: only the nodes the requested layers depend on, a Relu or Clip read only by a
// convolution or an Add fused into it (internal to the backbone module).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace patchcore {

class Backbone;

inline const std::string kWhere = "ONNX backbone graph";

// A graph an engine cannot run (an operator or an attribute it does not implement). The
// automatic engine choice falls back to OpenCV on it; asking for an engine explicitly turns it
// into Error(bad_input).
struct Unsupported : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Shape {
  int64_t c = 0, h = 0, w = 0;
};

enum class Kind { conv, relu, clip, add, mul, concat, max_pool, avg_pool, pad, scale_shift, copy };
enum class Act { none, relu, clip };

struct Op {
  Kind kind = Kind::copy;
  std::string name;  // the node's output, for messages
  std::vector<int> inputs;
  int output = -1;

  // conv and pools: kernel, strides, dilations, pads (top, left, bottom, right)
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1, pt = 0, pl = 0, pb = 0, pr = 0;
  // conv
  int64_t cout = 0, cin_per_group = 0, group = 1;
  std::vector<float> weight;  // [cout, cin_per_group * kh * kw] (ONNX order)
  std::vector<float> bias;    // [cout] or empty
  Act act = Act::none;        // fused activation (conv and add)
  float lo = 0, hi = 0;       // clip bounds (conv with Act::clip, or Kind::clip)
  // avg_pool
  bool count_include_pad = false;
  // pad
  float value = 0;
  // mul (per element, per channel or scalar) and scale_shift (per channel)
  std::vector<float> scale, shift;
  int64_t mul_c = 1, mul_h = 1, mul_w = 1;  // the mul constant's last three dimensions
};

/// The operators in the order they run. Value 0 is the input image; op.output numbers the rest.
struct OpGraph {
  std::vector<int64_t> input_shape;  ///< [N, C, H, W] as declared, 0 where symbolic
  std::vector<Op> ops;
  int values = 0;
  std::vector<int> outputs;   ///< value id per requested layer
  std::vector<int> last_use;  ///< op index after which a value can go; -1: never read
};

/// Throws Error(bad_input) when the bytes are not ONNX or lack a layer, Unsupported (naming the
/// node) when an operator or attribute is not one of the above.
OpGraph read_op_graph(const std::vector<uint8_t>& bytes, const std::vector<std::string>& layers);

/// Output size along one axis of a window of effective size k_eff.
int64_t window_out(int64_t in, int64_t k_eff, int64_t s, int64_t pad_begin, int64_t pad_end);

/// The shape op gives for inputs of shapes `in`; Error(bad_input) naming the op when they do
/// not fit it (e.g. an image too small for a window).
Shape output_shape(const Op& op, const std::vector<Shape>& in);

/// The shape of every value for an input of c x h x w.
std::vector<Shape> value_shapes(const OpGraph& g, int64_t c, int64_t h, int64_t w);

/// Floating-point operations of the convolutions for one h x w image (multiply-adds count two).
double conv_flops(const OpGraph& g, int64_t h, int64_t w);

/// The oneDNN engine, or nullptr (with the reason in *why) when the graph uses an operator or
/// attribute it lacks. Other errors (not ONNX, a missing layer) throw Error(bad_input).
/// bf16: activations and weights in bf16 (the caller checks dnnl_has_bf16()).
std::unique_ptr<Backbone> try_dnnl_backbone(const std::vector<uint8_t>& onnx,
                                            const std::vector<std::string>& layers, int threads,
                                            bool bf16, std::string* why);

}  // namespace patchcore
