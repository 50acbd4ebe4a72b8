// NumPy .npy files (format version 1.0) for float32 arrays: feature maps written by
// `patchcore features`, and reference arrays read by tests.
#pragma once

#include <filesystem>

#include "tensor.h"

namespace patchcore {

/// Writes a C-order '<f4' array with the tensor's shape (a 0-d tensor has shape ()). The header
/// is padded so that the data starts at a multiple of 64 bytes. Written to a temporary name and
/// renamed. Throws Error(bad_input) naming the file when it cannot be written.
void write_npy(const std::filesystem::path& file, const Tensor& t);

/// Reads a C-order '<f4' or '<f8' array (format 1.0, 2.0 or 3.0) as float32. Throws
/// Error(bad_input) naming the file when it is missing, truncated, Fortran-ordered or of
/// another dtype.
Tensor read_npy(const std::filesystem::path& file);

}  // namespace patchcore
