// The model file: safetensors layout (design.md §6), loaded without executing anything.
//
//   [8 bytes: little-endian uint64 N][N bytes: JSON header, space-padded][tensor bytes]
//   header: {"__metadata__": {"format": "patchcore", "format_version": "1", ...string values},
//            "<name>": {"dtype": "F32"|"U8", "shape": [...], "data_offsets": [begin, end]}, ...}
//   offsets are relative to the end of the header; tensors are contiguous and in order.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "tensor.h"

namespace patchcore {

inline constexpr const char* kModelFormat = "patchcore";
inline constexpr int kModelFormatVersion = 1;

struct ModelFileContents {
  /// Free-form string values; "format" and "format_version" are added on write.
  std::map<std::string, std::string> metadata;
  std::map<std::string, Tensor> f32;               ///< float tensors, e.g. "memory_bank"
  std::map<std::string, std::vector<uint8_t>> u8;  ///< byte blobs, e.g. "backbone_onnx"
};

/// Writes to "<file>.tmp-<random>" in the same folder, flushes, then renames over file, so a
/// crash never leaves a half-written model under the final name. Throws Error(bad_input)
/// naming the file when it cannot be written.
void write_model_file(const std::filesystem::path& file, const ModelFileContents& contents);

/// Throws Error(bad_input) naming the file when it is missing, truncated, not a patchcore model
/// (foreign safetensors or other bytes), of a newer format version, or inconsistent (offsets out
/// of range or overlapping, gaps or trailing bytes, shape not matching the byte size, unknown
/// dtype, a header over 100 MB). U8 tensors of any shape are returned flattened. An integer
/// format_version is accepted besides the string written here.
ModelFileContents read_model_file(const std::filesystem::path& file);

}  // namespace patchcore
