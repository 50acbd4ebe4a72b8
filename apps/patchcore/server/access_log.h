// One JSON line per request on stderr, written whole (lines of concurrent requests never mix).
#pragma once

#include <string>

namespace patchcore::serve {

struct AccessRecord {
  std::string remote, method, path, model;
  int status = 0;
  double seconds = 0;
  size_t request_bytes = 0, response_bytes = 0;
};

void write_access_log(const AccessRecord& r);

}  // namespace patchcore::serve
