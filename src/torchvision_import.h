// torchvision ResNets and Wide ResNets (the paper's backbone) as ONNX graphs for OpenCV DNN,
// built from a state_dict without Python.
//
// The graph (opset 10, as keras_onnx writes for OpenCV 4.6):
//  - input "input" [1, 3, height, width] with SYMBOLIC height and width: OpenCV 4.6 runs the
//    same loaded graph at any input size (checked at several sizes, odd ones included), so one
//    file serves every --image-size;
//  - every convolution carries its BatchNorm folded in (eval mode, eps 1e-5); the stem is
//    conv 7x7/2 + ReLU + max pool 3x3/2 pad 1; blocks are torchvision's BasicBlock or
//    Bottleneck (v1.5: the stride on the 3x3 convolution) with a 1x1 downsample where shapes
//    change;
//  - graph outputs "layer1".."layerK" (each the last block's output after the residual ReLU),
//    plus "maxpool" and every other block's output ("layer2.0", "layer3.4", ...) so that they can
//    be requested as layers too (OpenCV 4.6 returns graph outputs only; declaring them costs
//    nothing measurable). Other tensors are named after torchvision's modules ("bn1", "relu",
//    "layer1.0.bn2", ...) but are not graph outputs.
// metadata_props carry the defaults onnx_backbone_info() reads: "patchcore.layers" =
// "layer2,layer3", "patchcore.normalization" = "imagenet", "patchcore.image_size" = "224",
// "patchcore.source" = "torchvision:<arch>:sha256:<sha256 of the .pth file>".
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "patchcore/patchcore.h"
#include "torch_pickle.h"

namespace patchcore {

struct ResNetSpec {
  std::string name;
  bool bottleneck = false;      ///< Bottleneck (expansion 4) or BasicBlock (expansion 1)
  std::array<int, 4> blocks{};  ///< blocks per layer
  int64_t stem_width = 64;      ///< conv1 output channels
  std::array<int64_t, 4> planes = {64, 128, 256, 512};
  int64_t width_per_group = 64;  ///< Bottleneck inner width = planes * this / 64
};

/// resnet18/34/50/101/152, wide_resnet50_2, wide_resnet101_2; empty for other names.
std::optional<ResNetSpec> torchvision_arch(const std::string& name);
// torchvision_arch_names() and import_torchvision(): in the public header.

/// Every conv / BatchNorm tensor of the architecture (layer1..layer4) with its shape, as
/// torchvision names them; num_batches_tracked and fc.* are not listed.
std::map<std::string, std::vector<int64_t>> resnet_tensor_shapes(const ResNetSpec& spec);

/// The ONNX graph (serialised ModelProto) up to layer `last_layer` (1..4) from a state_dict.
/// Ignored keys: num_batches_tracked, fc.*, and the weights of layers past last_layer. Throws
/// Error(bad_input) naming `where` and the tensors when any needed tensor is missing or
/// mis-shaped, or when the dict holds keys the architecture does not have (a different ARCH).
/// `source` goes into "patchcore.source".
std::vector<uint8_t> resnet_to_onnx(const ResNetSpec& spec, const StateDict& weights,
                                    int last_layer, const std::string& source,
                                    const std::string& where);

}  // namespace patchcore
