#include "auth.h"

#include <fstream>

#include "patchcore/patchcore.h"

namespace patchcore::serve {
namespace {

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

}  // namespace

ApiKey ApiKey::from_file(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw Error(ErrorKind::bad_input, file.string() + ": cannot read the API key file");
  std::string line;
  std::getline(in, line);
  std::string key = trim(line);
  if (key.empty()) throw Error(ErrorKind::bad_input, file.string() + ": the API key is empty");
  return ApiKey(std::move(key));
}

bool ApiKey::matches(const std::string& candidate) const {
  // Every byte of the longer text is looked at whatever the contents, so the time tells an
  // attacker nothing about how much of a guess was right.
  const size_t n = std::max(key_.size(), candidate.size());
  unsigned diff = key_.size() != candidate.size() ? 1u : 0u;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char a = i < key_.size() ? key_[i] : 0;
    const unsigned char b = i < candidate.size() ? candidate[i] : 0;
    diff |= static_cast<unsigned>(a ^ b);
  }
  return diff == 0;
}

std::string request_key(const std::string& authorization, const std::string& x_api_key) {
  const std::string bearer = "Bearer ";
  if (authorization.rfind(bearer, 0) == 0) return trim(authorization.substr(bearer.size()));
  return trim(x_api_key);
}

}  // namespace patchcore::serve
