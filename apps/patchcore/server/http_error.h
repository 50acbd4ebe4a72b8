// The error a request handler throws to answer with a status and {"error": message}.
#pragma once

#include <stdexcept>
#include <string>

namespace patchcore::serve {

class HttpError : public std::runtime_error {
 public:
  HttpError(int status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

}  // namespace patchcore::serve
