// kill -9 at any moment of a command that writes a model: the output must be the old file or a
// complete new one. For fit today; update and merge call the same helper.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace patchcore::testing {

struct KillRun {
  bool killed = false;  ///< false: the command ended before the delay
  int exit_code = -1;   ///< when it ended by itself
  double seconds = 0;   ///< wall time until it ended or was killed
};

/// Runs build/patchcore with args (stdout and stderr to /dev/null), sends SIGKILL after
/// delay_seconds unless it has ended by then; delay_seconds < 0: waits for the end.
inline KillRun run_patchcore_killed_after(const std::vector<std::string>& args,
                                          double delay_seconds) {
  const std::string binary = std::string(PATCHCORE_BINARY_DIR) + "/patchcore";
  std::vector<std::string> argv_s{binary};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    ::setenv("OMP_WAIT_POLICY", "passive", 1);  // spares main()'s re-exec
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  KillRun r;
  if (pid < 0) {
    ADD_FAILURE() << "fork failed";
    return r;
  }
  int status = 0;
  for (;;) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    const double t =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (done == pid) {
      r.seconds = t;
      r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return r;
    }
    if (delay_seconds >= 0 && t >= delay_seconds) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.killed = true;
      r.seconds = t;
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

/// Temporary files of `out` beside it ("<name>.tmp-...").
inline std::vector<std::filesystem::path> temp_files_of(const std::filesystem::path& out) {
  std::vector<std::filesystem::path> found;
  const std::string prefix = out.filename().string() + ".tmp-";
  for (const auto& e : std::filesystem::directory_iterator(out.parent_path()))
    if (e.path().filename().string().rfind(prefix, 0) == 0) found.push_back(e.path());
  return found;
}

/// Runs `args` (a command that writes the model `out`) once to the end to time it, then again
/// killed with SIGKILL at each fraction of that time (fractions near 1 catch the write). After
/// each kill, `out` must be what it was before (absent, or the same bytes) or a complete model
/// that `patchcore info --verify` accepts. A last run to the end must leave no temporary file
/// beside `out`. Returns the number of runs that were killed before they ended.
inline int expect_kill9_leaves_old_or_complete(const std::vector<std::string>& args,
                                               const std::filesystem::path& out,
                                               const std::vector<double>& fractions) {
  namespace fs = std::filesystem;
  // The kill points are fractions of the fastest of three whole runs: a run timed while the
  // machine was busier would put the late points after the end of the quicker runs that follow.
  KillRun full = run_patchcore_killed_after(args, -1);
  EXPECT_EQ(full.exit_code, 0) << "the command fails without a kill";
  for (int i = 0; i < 2; ++i)
    full.seconds = std::min(full.seconds, run_patchcore_killed_after(args, -1).seconds);
  int killed = 0;
  for (double f : fractions) {
    SCOPED_TRACE("killed at " + std::to_string(f) + " of " + std::to_string(full.seconds) + " s");
    const std::optional<std::string> before =
        fs::exists(out) ? std::optional<std::string>(read_bytes(out)) : std::nullopt;
    const KillRun r = run_patchcore_killed_after(args, f * full.seconds);
    killed += r.killed ? 1 : 0;
    if (!r.killed) {
      EXPECT_EQ(r.exit_code, 0);
    }
    if (!fs::exists(out)) {
      EXPECT_FALSE(before.has_value()) << "the old model is gone";
      continue;
    }
    if (before && read_bytes(out) == *before) continue;  // the old file
    const KillRun verify = run_patchcore_killed_after({"info", "--verify", out.string()}, -1);
    EXPECT_EQ(verify.exit_code, 0) << "neither the old model nor a complete new one";
  }
  EXPECT_EQ(run_patchcore_killed_after(args, -1).exit_code, 0);
  EXPECT_TRUE(temp_files_of(out).empty()) << "a temporary file is left beside " << out;
  return killed;
}

}  // namespace patchcore::testing
