#include "binary_data.h"

#include <charconv>
#include <cstdint>

#include "http_error.h"

namespace patchcore::serve {

SplitBody split_body(const std::string& body, const std::string& header_length) {
  size_t n = body.size();
  if (!header_length.empty()) {
    const char* end = header_length.data() + header_length.size();
    auto [ptr, ec] = std::from_chars(header_length.data(), end, n);
    if (ec != std::errc() || ptr != end || n > body.size())
      throw HttpError(400, "Inference-Header-Content-Length '" + header_length +
                               "' is not a length within the body of " +
                               std::to_string(body.size()) + " bytes");
  }
  SplitBody out;
  out.header = nlohmann::json::parse(body.begin(), body.begin() + static_cast<std::ptrdiff_t>(n),
                                     nullptr, false);
  if (out.header.is_discarded() || !out.header.is_object())
    throw HttpError(400, "the request's JSON is not a valid JSON object");
  out.binary = std::string_view(body).substr(n);
  return out;
}

std::vector<std::string_view> bytes_elements(std::string_view data, size_t count,
                                             const std::string& tensor) {
  std::vector<std::string_view> out;
  while (out.size() < count) {
    if (data.size() < 4)
      throw HttpError(400, "input '" + tensor + "': binary data ends before element " +
                               std::to_string(out.size()) + "'s 4-byte length");
    const auto* p = reinterpret_cast<const uint8_t*>(data.data());
    const uint32_t len = p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t(p[3]) << 24);
    data.remove_prefix(4);
    if (len > data.size())
      throw HttpError(400, "input '" + tensor + "': element " + std::to_string(out.size()) +
                               " claims " + std::to_string(len) + " bytes, " +
                               std::to_string(data.size()) + " remain");
    out.push_back(data.substr(0, len));
    data.remove_prefix(len);
  }
  if (!data.empty())
    throw HttpError(400, "input '" + tensor + "': " + std::to_string(data.size()) +
                             " bytes of binary data beyond its " + std::to_string(count) +
                             " elements");
  return out;
}

std::string join_body(const nlohmann::json& header, const std::vector<std::string>& blobs,
                      size_t& header_length) {
  std::string body = header.dump();
  header_length = body.size();
  for (const std::string& b : blobs) body += b;
  return body;
}

}  // namespace patchcore::serve
