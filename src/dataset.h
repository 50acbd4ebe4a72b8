// Where the images are: an MVTec AD category folder or a plain folder of images.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace patchcore {

struct Sample {
  std::filesystem::path image;
  std::string kind;  ///< "good" or the defect kind (the test sub-folder); "" for a plain folder
  int label = -1;    ///< 0 normal, 1 anomalous, -1 unknown
  std::optional<std::filesystem::path> mask;  ///< ground truth, when it exists
};

struct Dataset {
  bool mvtec = false;         ///< train/good exists
  std::vector<Sample> train;  ///< MVTec: train/good; plain folder: every image
  std::vector<Sample> test;   ///< MVTec: test/<kind>/*; plain folder: empty
};

/// Image files directly in dir (png, jpg, jpeg, bmp, tif, tiff, webp; case-insensitive), sorted
/// by name; files named *_mask.png and hidden files (".name", e.g. macOS "._x.png") are left out.
/// Throws Error(bad_input) naming dir when it does not exist or is not a folder.
std::vector<std::filesystem::path> list_images(const std::filesystem::path& dir);

/// MVTec masks: ground_truth/<kind>/<stem>_mask.png, else <stem>.png; "good" never has one.
/// Throws Error(bad_input) naming dir when it does not exist, is not a folder, or holds no
/// image where one is needed (the folder itself, or train/good in the MVTec layout).
Dataset scan_dataset(const std::filesystem::path& dir);

}  // namespace patchcore
