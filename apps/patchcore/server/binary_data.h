// The binary tensor data extension of the Open Inference Protocol: a JSON header of
// Inference-Header-Content-Length bytes, then the tensors' raw bytes in the order of the
// tensors that have a "binary_data_size" parameter. A BYTES tensor's elements are each a 4-byte
// little-endian length followed by that many bytes.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace patchcore::serve {

struct SplitBody {
  nlohmann::json header;
  std::string_view binary;  ///< what follows the JSON (empty without the extension)
};

/// Splits a request body; header_length is the Inference-Header-Content-Length header's value
/// ("" when absent: the whole body is JSON). Throws HttpError 400 on a bad length or bad JSON.
SplitBody split_body(const std::string& body, const std::string& header_length);

/// Cuts `count` length-prefixed BYTES elements from `data`, which they must fill exactly.
/// Throws HttpError 400 naming `tensor` otherwise.
std::vector<std::string_view> bytes_elements(std::string_view data, size_t count,
                                             const std::string& tensor);

/// A response body: the JSON header followed by the blobs; sets header_length.
std::string join_body(const nlohmann::json& header, const std::vector<std::string>& blobs,
                      size_t& header_length);

}  // namespace patchcore::serve
