#include "onnx_graph.h"

#include <limits>
#include <set>

#include "error.h"

namespace patchcore {

onnx::ModelProto parse_onnx(const std::vector<uint8_t>& bytes, const std::string& where) {
  onnx::ModelProto model;
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    throw_bad_input(where, "not an ONNX model");
  }
  return model;
}

GraphInput image_input(const onnx::ModelProto& model, const std::string& where) {
  std::set<std::string> initializers;
  for (const auto& t : model.graph().initializer()) initializers.insert(t.name());
  GraphInput input;
  bool found = false;
  for (const auto& in : model.graph().input()) {
    if (initializers.count(in.name())) continue;
    if (found) throw_bad_input(where, "the graph has more than one input");
    found = true;
    input.name = in.name();
    for (const auto& d : in.type().tensor_type().shape().dim()) {
      input.shape.push_back(d.has_dim_value() ? d.dim_value() : 0);
    }
  }
  if (input.shape.size() != 4) {
    throw_bad_input(where, "the graph input is not an image batch [N, C, H, W]");
  }
  return input;
}

void check_batch_shape(const std::vector<int64_t>& declared, const Tensor& batch) {
  if (batch.shape.size() != 4) throw_usage("backbone input must be [N, C, H, W]");
  PATCHCORE_ASSERT(declared.size() == 4);
  for (size_t d = 1; d < 4; ++d) {
    if (declared[d] > 0 && declared[d] != batch.shape[d]) {
      throw_usage("backbone input [" + std::to_string(batch.shape[0]) + ", " +
                  std::to_string(batch.shape[1]) + ", " + std::to_string(batch.shape[2]) + ", " +
                  std::to_string(batch.shape[3]) + "] does not match the graph's [" +
                  std::to_string(declared[0]) + ", " + std::to_string(declared[1]) + ", " +
                  std::to_string(declared[2]) + ", " + std::to_string(declared[3]) + "]");
    }
  }
}

}  // namespace patchcore
