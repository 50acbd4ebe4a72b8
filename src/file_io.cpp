#include "file_io.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "error.h"

namespace fs = std::filesystem;

namespace patchcore {

std::string read_file(const fs::path& file) {
  std::error_code ec;
  const auto status = fs::status(file, ec);
  if (!fs::exists(status)) throw_bad_input(file.string(), "no such file");
  if (fs::is_directory(status)) throw_bad_input(file.string(), "is a folder, not a file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw_bad_input(file.string(), "cannot open: " + std::string(std::strerror(errno)));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw_bad_input(file.string(), "read error");
  return s.str();
}

}  // namespace patchcore
