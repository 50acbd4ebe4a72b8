// An inference request of the Open Inference Protocol, checked and with its images decoded.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "binary_data.h"
#include "patchcore/patchcore.h"

namespace patchcore::serve {

/// The outputs a model offers (anomalib's names, plus the raw score).
inline const std::vector<std::string> kOutputNames = {"pred_score", "pred_label", "raw_score",
                                                      "anomaly_map", "pred_mask"};
/// The outputs a request gets when it names none: the maps cost 4 bytes a pixel.
inline const std::vector<std::string> kDefaultOutputs = {"pred_score", "pred_label", "raw_score"};

struct OutputChoice {
  std::string name;
  bool binary = false;  ///< sent through the binary tensor data extension
};

struct InferRequest {
  std::string id;
  std::vector<std::vector<uint8_t>> buffers;  ///< own the pixels the views point into
  std::vector<ImageView> images;
  std::vector<OutputChoice> outputs;
  std::optional<double> threshold;  ///< raw image-score threshold for this call
};

/// Reads the request: one input, a BYTES tensor [N] of encoded images (base64 strings in JSON
/// or binary elements) or a UINT8 tensor [N, H, W, C]. An image over max_pixels (per its header,
/// before decoding) throws HttpError 413; anything malformed HttpError 400 naming the field,
/// as does an image that cannot be decoded.
InferRequest parse_infer_request(const SplitBody& body, int64_t max_pixels);

}  // namespace patchcore::serve
