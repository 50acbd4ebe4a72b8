// What both backbone engines read from an ONNX graph before running it, and check at each
// forward pass (internal to the backbone module).
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tensor.h"

namespace patchcore {

/// Throws Error(bad_input) "<where>: not an ONNX model" when the bytes do not parse.
onnx::ModelProto parse_onnx(const std::vector<uint8_t>& bytes, const std::string& where);

/// The graph's one image input (initializers listed as inputs do not count).
struct GraphInput {
  std::string name;
  std::vector<int64_t> shape;  ///< [N, C, H, W], 0 where a dimension is symbolic
};
/// Throws Error(bad_input) naming `where` when the graph has several inputs or a non-4-D one.
GraphInput image_input(const onnx::ModelProto& model, const std::string& where);

/// Throws Error(usage) when a batch is not [N, C, H, W] or differs from the declared shape in
/// a dimension the graph fixes.
void check_batch_shape(const std::vector<int64_t>& declared, const Tensor& batch);

}  // namespace patchcore
