#include "dataset.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <system_error>

#include "error.h"

namespace fs = std::filesystem;

namespace patchcore {

namespace {

constexpr std::array<const char*, 7> kExtensions = {".png", ".jpg",  ".jpeg", ".bmp",
                                                    ".tif", ".tiff", ".webp"};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string extension_list() {
  std::string s;
  for (const char* e : kExtensions) {
    if (!s.empty()) s += ' ';
    s += e;
  }
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_image_name(const std::string& name) {
  // Hidden files include macOS "._name.png" resource forks, which are not images.
  if (name.empty() || name[0] == '.') return false;
  const std::string l = lower(name);
  if (ends_with(l, "_mask.png")) return false;
  return std::any_of(kExtensions.begin(), kExtensions.end(),
                     [&](const char* e) { return ends_with(l, e); });
}

void require_folder(const fs::path& dir) {
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  if (!fs::exists(st)) throw_bad_input(dir.string(), "no such folder");
  if (!fs::is_directory(st)) throw_bad_input(dir.string(), "not a folder");
}

// Entries of dir that satisfy keep, sorted by name so that every run sees the same order.
template <typename Keep>
std::vector<fs::path> list_sorted(const fs::path& dir, Keep keep) {
  require_folder(dir);
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (keep(*it)) out.push_back(it->path());
  }
  if (ec) throw_bad_input(dir.string(), "cannot list the folder: " + ec.message());
  std::sort(out.begin(), out.end(),
            [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  return out;
}

bool is_folder(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

std::optional<fs::path> find_mask(const fs::path& gt_dir, const fs::path& image) {
  const std::string stem = image.stem().string();
  for (const fs::path& candidate : {gt_dir / (stem + "_mask.png"), gt_dir / (stem + ".png")}) {
    std::error_code ec;
    if (fs::is_regular_file(candidate, ec)) return candidate;
  }
  return std::nullopt;
}

}  // namespace

std::vector<fs::path> list_images(const fs::path& dir) {
  return list_sorted(dir, [](const fs::directory_entry& e) {
    std::error_code ec;
    return e.is_regular_file(ec) && is_image_name(e.path().filename().string());
  });
}

Dataset scan_dataset(const fs::path& dir) {
  require_folder(dir);
  Dataset ds;
  const fs::path train_good = dir / "train" / "good";
  ds.mvtec = is_folder(train_good);
  if (!ds.mvtec) {
    for (const fs::path& p : list_images(dir)) ds.train.push_back({p, "", -1, std::nullopt});
    if (ds.train.empty()) {
      const bool has_train = is_folder(dir / "train");
      throw_bad_input(dir.string(),
                      "no images in " + dir.string() + " (looked for " + extension_list() + ")" +
                          (has_train ? "; for the MVTec layout images go in train/good" : ""));
    }
    return ds;
  }

  for (const fs::path& p : list_images(train_good))
    ds.train.push_back({p, "good", 0, std::nullopt});
  if (ds.train.empty())
    throw_bad_input(train_good.string(), "no images in " + train_good.string() + " (looked for " +
                                             extension_list() + ")");

  const fs::path test = dir / "test";
  if (!is_folder(test)) return ds;
  const auto kinds = list_sorted(test, [](const fs::directory_entry& e) {
    std::error_code ec;
    const std::string name = e.path().filename().string();
    return e.is_directory(ec) && !name.empty() && name[0] != '.';
  });
  for (const fs::path& kind_dir : kinds) {
    const std::string kind = kind_dir.filename().string();
    const bool good = kind == "good";
    const fs::path gt_dir = dir / "ground_truth" / kind;
    for (const fs::path& p : list_images(kind_dir)) {
      Sample s{p, kind, good ? 0 : 1, std::nullopt};
      if (!good) s.mask = find_mask(gt_dir, p);
      ds.test.push_back(std::move(s));
    }
  }
  return ds;
}

}  // namespace patchcore
