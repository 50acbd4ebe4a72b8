// A dense row-major float array with a shape: feature maps (NCHW) and matrices ([rows, cols]).
#pragma once

#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

namespace patchcore {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s) : shape(std::move(s)), data(count(shape)) {}

  static int64_t count(const std::vector<int64_t>& s) {
    return std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<>());
  }
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  int64_t dim(size_t i) const { return shape.at(i); }
  float* ptr() { return data.data(); }
  const float* ptr() const { return data.data(); }
  /// Row i of a 2-D tensor.
  float* row(int64_t i) { return data.data() + i * shape.at(1); }
  const float* row(int64_t i) const { return data.data() + i * shape.at(1); }
};

/// A read-only view of a row-major [rows, cols] matrix held elsewhere: a 2-D Tensor, or a plain
/// buffer such as fit's memory bank (allocated without zeroing, see Model::fit).
struct MatrixView {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* row(int64_t i) const { return data + i * cols; }
};

}  // namespace patchcore
