// Converting a Keras functional model (TF.js layers format, as shipped in the npm package
// nsfwjs) into an ONNX graph that OpenCV DNN runs.
//
// On disk a Keras backbone is a folder with
//   model.json   {"modelTopology": <TF.js layers topology>,
//                 "weights": [{"name": "conv2d_1/kernel", "shape": [3,3,3,32], "offset": 0}, ...]}
//   weights.bin  float32 little-endian, dequantised; "offset" counts floats
// written by scripts/tfjs_dump.js at set-up.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tensor.h"

namespace patchcore {

struct KerasModel {
  nlohmann::json layers;                  ///< modelTopology.model_config.config.layers
  std::map<std::string, Tensor> weights;  ///< "layer/kernel" -> tensor in Keras layout
  std::string weights_sha256;             ///< of weights.bin, the backbone's identity
};

/// Throws Error(bad_input) naming the file when the folder is missing or inconsistent.
KerasModel load_keras_model(const std::filesystem::path& dir);

/// ONNX (serialised ModelProto) of the graph from the input up to the deepest of `outputs`,
/// for a fixed NCHW input "input" of [1, 3, height, width] (TensorFlow's 'same' padding
/// depends on the size). The outputs are named after the Keras layers. Keras' 'same' average
/// pooling excludes the padding from the mean; OpenCV 4.6 ignores count_include_pad = 0, so
/// the graph pools with the padding included and multiplies by a constant correction map.
/// Throws Error(bad_input) on an unknown layer name or an unsupported layer type.
std::vector<uint8_t> keras_to_onnx(const KerasModel& model, int height, int width,
                                   const std::vector<std::string>& outputs);

}  // namespace patchcore
