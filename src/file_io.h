// Reading a whole file, with errors that name it.
#pragma once

#include <filesystem>
#include <string>

namespace patchcore {

/// The file's bytes. Throws Error(bad_input) naming the file when it is missing, a folder,
/// unreadable, or cannot be read to the end.
std::string read_file(const std::filesystem::path& file);

}  // namespace patchcore
