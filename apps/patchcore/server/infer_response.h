// The answer to an inference request: the outputs it asked for, in JSON or as binary data.
#pragma once

#include <string>
#include <vector>

#include "infer_request.h"

namespace patchcore::serve {

struct InferResponse {
  std::string body;
  std::string content_type;  ///< application/json, or application/octet-stream with binary data
  size_t header_length = 0;  ///< the JSON part's length when content_type is octet-stream
};

/// pred_score: normalised (the threshold at 0.5); pred_label: score >= threshold; raw_score;
/// anomaly_map: the map at each image's size, normalised as scores are with the pixel threshold
/// at 0.5; pred_mask: map >= pixel threshold. The request's threshold (raw) replaces the
/// model's, and moves the pixel threshold by as much.
InferResponse make_infer_response(const std::string& model_name, const Model& model,
                                  const InferRequest& request,
                                  const std::vector<Prediction>& predictions);

}  // namespace patchcore::serve
