// libFuzzer target: a model file of any bytes is loaded, and what loads predicts one small image.
//
// Each input runs twice: as it is (the header parser, the layout checks and the checksums), and
// re-sealed with valid checksums when its structure parses, as a crafted file would be: that
// run reaches the checks of every value and the prediction. Any outcome but a prediction or
// Error(bad_input) is a finding: a crash, a sanitizer report, an internal error, an exception
// of another type, or a prediction with a non-finite score.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "error.h"
#include "model_file.h"
#include "patchcore/patchcore.h"

namespace fs = std::filesystem;
using patchcore::Error;
using patchcore::ErrorKind;

namespace {

fs::path g_dir;

void write_file(const fs::path& file, const uint8_t* data, size_t size) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

void expect_bad_input(const Error& e) {
  if (e.kind() != ErrorKind::bad_input) throw;  // an internal or usage error is a finding
}

void load_and_predict(const fs::path& file) {
  try {
    patchcore::Model model = patchcore::Model::load(file);
    model.set_threads(1);
    const patchcore::Prediction p = model.predict(g_dir / "image.png");
    if (!std::isfinite(p.score) || p.map.values.empty()) std::abort();
  } catch (const Error& e) {
    expect_bad_input(e);
  }
}

// The structure as the file has it, written again with fresh checksums; false when the
// structure does not parse (nothing to re-seal).
bool reseal(const fs::path& in, const fs::path& out) {
  patchcore::ModelFileContents c;
  try {
    c = patchcore::read_model_file(in, patchcore::Checksums::ignore);
  } catch (const Error& e) {
    expect_bad_input(e);
    return false;
  }
  // Names the writer refuses (asserts) cannot come from a file it wrote.
  for (const auto& [name, t] : c.f32)
    if (name.empty() || c.u8.count(name) || name == patchcore::kChecksumTensor) return false;
  for (const auto& [name, t] : c.u8)
    if (name.empty() || name == patchcore::kChecksumTensor) return false;
  try {
    patchcore::write_model_file(out, c);
  } catch (const Error& e) {
    expect_bad_input(e);
    return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/fuzz_model_file-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) std::abort();
  g_dir = tmpl;
  cv::Mat image(40, 40, CV_8UC3);
  cv::randu(image, 0, 255);
  if (!cv::imwrite((g_dir / "image.png").string(), image)) std::abort();
  std::atexit([] { fs::remove_all(g_dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path input = g_dir / "input.patchcore", sealed = g_dir / "sealed.patchcore";
  write_file(input, data, size);
  load_and_predict(input);
  if (reseal(input, sealed)) load_and_predict(sealed);
  return 0;
}
