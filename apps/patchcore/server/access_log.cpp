#include "access_log.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>

namespace patchcore::serve {
namespace {

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, int(ms));
  return buf;
}

}  // namespace

void write_access_log(const AccessRecord& r) {
  nlohmann::json j{{"time", utc_now()},
                   {"remote", r.remote},
                   {"method", r.method},
                   {"path", r.path},
                   {"status", r.status},
                   {"seconds", r.seconds},
                   {"request_bytes", r.request_bytes},
                   {"response_bytes", r.response_bytes}};
  if (!r.model.empty()) j["model"] = r.model;
  // The path comes from the client: dump() escapes it, so a line can never be forged.
  const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  static std::mutex mutex;
  std::lock_guard lock(mutex);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace patchcore::serve
