// Base64 (RFC 4648, standard alphabet) for BYTES tensors carried in JSON.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace patchcore::serve {

/// Decodes standard base64 (padding optional, no whitespace); nullopt when the text is not
/// base64.
std::optional<std::string> base64_decode(std::string_view text);
std::string base64_encode(std::string_view bytes);

}  // namespace patchcore::serve
