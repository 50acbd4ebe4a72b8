// The model file: safetensors layout (design.md §6, docs/model_format.md), loaded without
// executing anything, every byte covered by a checksum (format version 2).
//
//   [8 bytes: little-endian uint64 N][N bytes: JSON header, space-padded][tensor bytes]
//   header: {"__metadata__": {"format": "patchcore", "format_version": "2", ...string values},
//            "<name>": {"dtype": "F32"|"U8", "shape": [...], "data_offsets": [begin, end]}, ...}
//   offsets are relative to the end of the header; tensors are contiguous.
//   The U8 tensor "__checksums__" (written last) holds the XXH3-64 of the first 8 + N bytes,
//   of each metadata value and of each other tensor, and of itself (docs/model_format.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "tensor.h"

namespace patchcore {

inline constexpr const char* kModelFormat = "patchcore";
/// 2: the "__checksums__" tensor. Version 1 files (no checksums) still load.
inline constexpr int kModelFormatVersion = 2;
/// The tensor name the checksum table takes; no other tensor may use it.
inline constexpr const char* kChecksumTensor = "__checksums__";

struct ModelFileContents {
  /// Free-form string values; "format" and "format_version" are added on write. Every entry,
  /// present or future, gets its own checksum.
  std::map<std::string, std::string> metadata;
  std::map<std::string, Tensor> f32;               ///< float tensors, e.g. "memory_bank"
  std::map<std::string, std::vector<uint8_t>> u8;  ///< byte blobs, e.g. "backbone_onnx"
  /// Set by read_model_file: the file's format version, and whether its checksums were
  /// verified (false for version 1 files, which carry none, or with Checksums::ignore).
  int format_version = kModelFormatVersion;
  bool checksums_verified = false;
};

/// Writes to "<file>.tmp-<pid>-<random>" in the same folder, flushes, then renames over file, so
/// a crash never leaves a half-written model under the final name. Temporary files of the same
/// target left by a process that no longer runs (killed with -9 mid-write) are removed first.
/// Throws Error(bad_input) naming the file when it cannot be written.
void write_model_file(const std::filesystem::path& file, const ModelFileContents& contents);

enum class Checksums {
  verify,  ///< every byte is checked (the only choice for loading a model)
  ignore,  ///< structure only: for tools that re-seal a crafted file (the fuzz target)
};

/// Throws Error(bad_input) naming the file when it is missing, truncated, not a patchcore model
/// (foreign safetensors or other bytes), of a newer format version, inconsistent (offsets out
/// of range or overlapping, gaps or trailing bytes, shape not matching the byte size, unknown
/// dtype, a header over 100 MB), or damaged: a checksum that does not match names the part
/// (the header, metadata entry X, tensor Y, the checksum table). U8 tensors of any shape are
/// returned flattened; the checksum table is not returned. An integer format_version is
/// accepted besides the string written here.
ModelFileContents read_model_file(const std::filesystem::path& file,
                                  Checksums checksums = Checksums::verify);

}  // namespace patchcore
