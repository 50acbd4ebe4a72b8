// Content identity of backbones and model inputs.
#pragma once

#include <cstddef>
#include <string>

namespace patchcore {

/// Lower-case hex SHA-256 of the bytes (OpenSSL's libcrypto does the work).
std::string sha256_hex(const void* data, size_t size);

}  // namespace patchcore
