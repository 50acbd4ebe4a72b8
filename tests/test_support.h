// Shared helpers for the test suite.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "patchcore/patchcore.h"

namespace patchcore::testing {

/// A fresh folder under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// ../shared/data beside the source tree, or empty when it is not there (tests then skip).
std::filesystem::path shared_data_dir();

/// build/backbones (set up by scripts/setup), or empty when missing.
std::filesystem::path built_backbones_dir();

/// What build/patchcore printed and returned.
struct CmdResult {
  int code = -1;
  std::string out, err;
};

/// s as one word for /bin/sh (single quotes).
std::string shell_quote(const std::string& s);

/// Runs build/patchcore with args (each passed as one word), stdin from /dev/null, stdout and
/// stderr captured through files in tmp.
CmdResult run_cli(const TempDir& tmp, const std::vector<std::string>& args);

/// Writes bytes to a file (for corrupt-file tests).
void write_bytes(const std::filesystem::path& file, const std::string& bytes);
std::string read_bytes(const std::filesystem::path& file);

/// Runs action(), which must throw Error(bad_input) whose message names `path`; returns the
/// message for further checks (empty, with a test failure, when nothing was thrown).
template <class Action>
std::string expect_bad_input_naming(const std::filesystem::path& path, Action&& action) {
  try {
    action();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input) << e.what();
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error for " << path;
  return "";
}

}  // namespace patchcore::testing
