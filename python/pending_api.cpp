#include "pending_api.h"

#include <algorithm>
#include <array>
#include <cctype>

#include "patchcore/patchcore.h"

namespace fs = std::filesystem;

namespace patchcore::python {

std::vector<fs::path> list_images(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw Error(ErrorKind::bad_input, dir.string() + ": not a folder");
  static const std::array<const char*, 7> kExtensions{".png", ".jpg",  ".jpeg", ".bmp",
                                                      ".tif", ".tiff", ".webp"};
  std::vector<fs::path> out;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    std::string ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    const bool image = std::find(kExtensions.begin(), kExtensions.end(), ext) != kExtensions.end();
    const bool mask = name.size() > 9 && name.ends_with("_mask.png");
    if (image && !mask && name.front() != '.') out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<fs::path> training_images(const fs::path& dir) {
  const fs::path good = dir / "train" / "good";
  return list_images(fs::is_directory(good) ? good : dir);
}

}  // namespace patchcore::python
