#include "pending_api.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <utility>

namespace fs = std::filesystem;

namespace patchcore::python {

namespace {

template <class E, size_t N>
const char* name_of(const std::array<std::pair<const char*, E>, N>& names, E v) {
  for (const auto& [text, value] : names)
    if (value == v) return text;
  return "?";
}

template <class E, size_t N>
void parse(const std::array<std::pair<const char*, E>, N>& names, const std::string& option,
           const std::string& text, E& v) {
  std::string accepted;
  for (const auto& [name, value] : names) {
    if (text == name) {
      v = value;
      return;
    }
    accepted += (accepted.empty() ? "" : ", ") + std::string(name);
  }
  throw Error(ErrorKind::usage,
              option + ": unknown value '" + text + "' (expected one of " + accepted + ")");
}

constexpr std::array<std::pair<const char*, Resize>, 3> kResize{
    {{"squash", Resize::squash}, {"pad", Resize::pad}, {"fixed", Resize::fixed}}};
constexpr std::array<std::pair<const char*, Intensity>, 3> kIntensity{
    {{"auto", Intensity::automatic},
     {"keep", Intensity::keep},
     {"standardize", Intensity::standardize}}};
constexpr std::array<std::pair<const char*, EmbeddingMode>, 2> kEmbedding{
    {{"concat", EmbeddingMode::concat}, {"paper", EmbeddingMode::paper}}};
constexpr std::array<std::pair<const char*, Upsample>, 2> kUpsample{
    {{"bilinear", Upsample::bilinear}, {"nearest", Upsample::nearest}}};
constexpr std::array<std::pair<const char*, BackboneEngine>, 3> kEngine{
    {{"auto", BackboneEngine::automatic},
     {"gemm", BackboneEngine::gemm},
     {"opencv", BackboneEngine::opencv}}};

}  // namespace

const char* to_text(Resize v) { return name_of(kResize, v); }
const char* to_text(Intensity v) { return name_of(kIntensity, v); }
const char* to_text(EmbeddingMode v) { return name_of(kEmbedding, v); }
const char* to_text(Upsample v) { return name_of(kUpsample, v); }
const char* to_text(BackboneEngine v) { return name_of(kEngine, v); }

void from_text(const std::string& o, const std::string& t, Resize& v) { parse(kResize, o, t, v); }
void from_text(const std::string& o, const std::string& t, Intensity& v) {
  parse(kIntensity, o, t, v);
}
void from_text(const std::string& o, const std::string& t, EmbeddingMode& v) {
  parse(kEmbedding, o, t, v);
}
void from_text(const std::string& o, const std::string& t, Upsample& v) {
  parse(kUpsample, o, t, v);
}
void from_text(const std::string& o, const std::string& t, BackboneEngine& v) {
  parse(kEngine, o, t, v);
}

Params preset_params(const std::string& preset) {
  Params p;
  p.preset = preset;
  if (preset == "paper") {
    p.image_size = 256;
    p.crop = 224;
    p.embedding = EmbeddingMode::paper;
    p.squared_l2 = true;
    p.coreset_ratio = 0.1;
    p.coreset_min = 0;
    p.intensity = Intensity::keep;
  } else if (preset == "anomalib") {
    p.image_size = 256;
    p.embedding = EmbeddingMode::concat;
    p.reweight = true;
    p.upsample = Upsample::nearest;
    p.blur_reflect101 = true;
    p.coreset_ratio = 0.1;
    p.coreset_min = 0;
    p.intensity = Intensity::keep;
  } else if (!preset.empty()) {
    throw Error(ErrorKind::usage,
                "preset: unknown value '" + preset + "' (expected one of paper, anomalib)");
  }
  return p;
}

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
