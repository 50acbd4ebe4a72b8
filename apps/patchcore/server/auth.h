// The optional API key: every request but the page and the health probes must carry it as
// "Authorization: Bearer <key>" (or "X-API-Key: <key>").
#pragma once

#include <filesystem>
#include <string>

namespace patchcore::serve {

class ApiKey {
 public:
  /// The key is the file's first line without surrounding whitespace. Throws Error(bad_input)
  /// naming the file when it cannot be read or the key is empty.
  static ApiKey from_file(const std::filesystem::path& file);
  /// Compares in time that depends only on the lengths, never on where the texts differ.
  bool matches(const std::string& candidate) const;

 private:
  explicit ApiKey(std::string key) : key_(std::move(key)) {}
  std::string key_;
};

/// The key a request carries: the Bearer token of Authorization, else X-API-Key; "" when none.
std::string request_key(const std::string& authorization, const std::string& x_api_key);

}  // namespace patchcore::serve
