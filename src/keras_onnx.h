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
  std::filesystem::path source;           ///< folder it was loaded from; names it in errors
};

/// Throws Error(bad_input) naming the file when the folder is missing or inconsistent.
KerasModel load_keras_model(const std::filesystem::path& dir);

/// ONNX (serialised ModelProto) of the graph from the input up to the deepest of `outputs`,
/// for a fixed NCHW input "input" of [1, 3, height, width] (TensorFlow's 'same' padding
/// depends on the size). The outputs are named after the Keras layers. Keras' 'same' average
/// pooling excludes the padding from the mean; OpenCV 4.6 ignores count_include_pad = 0, so
/// the graph pools with the padding included and multiplies by a constant correction map.
/// Supported layers: InputLayer, ZeroPadding2D, Conv2D, DepthwiseConv2D, BatchNormalization
/// (folded into a preceding convolution when nothing else reads the convolution), ReLU
/// (max_value, no slope or threshold), Activation (relu, linear), Add, Concatenate (channels),
/// MaxPooling2D, AveragePooling2D; channels_last only. Only the layers the outputs depend on
/// are converted, so unsupported layers past them (Flatten, Dense, ...) do no harm. The graph
/// is opset 10 and written for OpenCV 4.6: asymmetric 'same' padding (the extra row/column at
/// the bottom/right, TensorFlow's rule) is a separate constant Pad node (padding value lowest
/// float before a max pool), and the average-pool correction map is [1, C, h, w] because
/// OpenCV 4.6 does not broadcast a [1, 1, h, w] constant.
/// Throws Error(bad_input) on an unknown layer name, an unsupported layer type or
/// configuration, a missing or mis-shaped weight, or an input too small for the network.
std::vector<uint8_t> keras_to_onnx(const KerasModel& model, int height, int width,
                                   const std::vector<std::string>& outputs);

}  // namespace patchcore
