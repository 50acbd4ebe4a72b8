#include "error.h"

namespace patchcore {

Error::Error(ErrorKind kind, const std::string& message)
    : std::runtime_error(message), kind_(kind) {}

void throw_bad_input(const std::string& path, const std::string& what) {
  throw Error(ErrorKind::bad_input, path + ": " + what);
}

void throw_usage(const std::string& what) { throw Error(ErrorKind::usage, what); }

}  // namespace patchcore
