// Evaluation on labelled test images: metrics, predictions, pictures and an HTML report.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "patchcore/patchcore.h"

namespace patchcore {

// EvalOptions, EvalResult and evaluate(): in the public header.

/// Writes text to a file atomically (temporary name, then rename). Throws Error(bad_input).
void write_text_file(const std::filesystem::path& file, const std::string& text);

/// A relative path from dir to file, with '/' separators (for links in the report).
std::string relative_link(const std::filesystem::path& file, const std::filesystem::path& dir);

}  // namespace patchcore
