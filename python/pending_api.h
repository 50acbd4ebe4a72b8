// What the Python module needs that include/patchcore/patchcore.h does not offer yet: option
// text for the enums, the presets, and the listing of a folder's images. The helper `api` is
// moving each of these into the public API; this file goes when that lands, so that the module
// and the CLI share one definition.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "patchcore/patchcore.h"

namespace patchcore::python {

const char* to_text(Resize v);
const char* to_text(Intensity v);
const char* to_text(EmbeddingMode v);
const char* to_text(Upsample v);
const char* to_text(BackboneEngine v);

/// Parses the text to_text() gives (the CLI's option values); throws Error(usage) naming
/// `option` and the accepted values otherwise.
void from_text(const std::string& option, const std::string& text, Resize& v);
void from_text(const std::string& option, const std::string& text, Intensity& v);
void from_text(const std::string& option, const std::string& text, EmbeddingMode& v);
void from_text(const std::string& option, const std::string& text, Upsample& v);
void from_text(const std::string& option, const std::string& text, BackboneEngine& v);

/// Params of a preset ("paper", "anomalib"; "": the defaults), as the CLI's --preset sets them.
Params preset_params(const std::string& preset);

/// Image files directly in dir, sorted, without *_mask.png and hidden files (the CLI's listing).
std::vector<std::filesystem::path> list_images(const std::filesystem::path& dir);
/// The images fit uses from a folder: train/good of an MVTec category, else the folder's own.
std::vector<std::filesystem::path> training_images(const std::filesystem::path& dir);

}  // namespace patchcore::python
