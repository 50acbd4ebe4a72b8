// What the Python module needs that include/patchcore/patchcore.h does not offer yet: the listing
// of a folder's images. The helper `api` is making the library's list_images public; this file
// goes when that lands, so that the module and the CLI share one definition.
#pragma once

#include <filesystem>
#include <vector>

namespace patchcore::python {

/// Image files directly in dir, sorted, without *_mask.png and hidden files (the CLI's listing).
std::vector<std::filesystem::path> list_images(const std::filesystem::path& dir);
/// The images fit uses from a folder: train/good of an MVTec category, else the folder's own.
std::vector<std::filesystem::path> training_images(const std::filesystem::path& dir);

}  // namespace patchcore::python
