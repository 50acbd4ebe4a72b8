#include "npy.h"

#include <bit>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "error.h"

namespace patchcore {

namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, ".npy data is written as '<f4'");

void write_npy(const fs::path& file, const Tensor& t) {
  PATCHCORE_ASSERT(Tensor::count(t.shape) == t.numel());
  std::string shape;  // Python tuple syntax: "", "5," or "2, 3"
  for (size_t i = 0; i < t.shape.size(); ++i) {
    shape += (i > 0 ? ", " : "") + std::to_string(t.shape[i]);
  }
  if (t.shape.size() == 1) shape += ",";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  // magic (6) + version (2) + length (2) + header + '\n', padded with spaces to 64 bytes.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  if (header.size() > 65535) throw_bad_input(file.string(), "array has too many dimensions");

  const fs::path tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw_bad_input(tmp.string(), "cannot create the file");
    const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
    out.write(magic, 8);
    const char len[2] = {static_cast<char>(header.size() & 0xFF),
                         static_cast<char>(header.size() >> 8)};
    out.write(len, 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(reinterpret_cast<const char*>(t.data.data()),
              static_cast<std::streamsize>(t.data.size() * sizeof(float)));
    out.close();
    if (!out) throw_bad_input(tmp.string(), "write error (disk full?)");
  }
  std::error_code ec;
  fs::rename(tmp, file, ec);
  if (ec) throw_bad_input(file.string(), "cannot rename the temporary file: " + ec.message());
}

namespace {

// The value of 'key' in the header dict, as the raw text up to the next top-level comma.
std::string header_field(const std::string& h, const std::string& key, const std::string& where) {
  const size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) throw_bad_input(where, "npy header lacks '" + key + "'");
  size_t p = h.find(':', k);
  if (p == std::string::npos) throw_bad_input(where, "bad npy header");
  ++p;
  while (p < h.size() && h[p] == ' ') ++p;
  size_t e = p;
  int depth = 0;
  while (e < h.size() && (depth > 0 || (h[e] != ',' && h[e] != '}'))) {
    if (h[e] == '(') ++depth;
    if (h[e] == ')') --depth;
    ++e;
  }
  return h.substr(p, e - p);
}

}  // namespace

Tensor read_npy(const fs::path& file) {
  const std::string where = file.string();
  std::ifstream in(file, std::ios::binary);
  if (!in) throw_bad_input(where, "cannot open the file");
  std::ostringstream s;
  s << in.rdbuf();
  const std::string b = s.str();
  if (b.size() < 10 || b.compare(0, 6, "\x93NUMPY") != 0) throw_bad_input(where, "not a .npy file");
  const int major = static_cast<uint8_t>(b[6]);
  size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(b[8]) | static_cast<size_t>(static_cast<uint8_t>(b[9])) << 8;
    start = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) throw_bad_input(where, "truncated .npy header");
    for (int i = 3; i >= 0; --i) header_len = header_len << 8 | static_cast<uint8_t>(b[8 + i]);
    start = 12;
  } else {
    throw_bad_input(where, "unsupported .npy version " + std::to_string(major));
  }
  if (b.size() - start < header_len) throw_bad_input(where, "truncated .npy header");
  const std::string h = b.substr(start, header_len);
  const std::string descr = header_field(h, "descr", where);
  const std::string fortran = header_field(h, "fortran_order", where);
  const std::string shape = header_field(h, "shape", where);
  if (fortran != "False") throw_bad_input(where, "Fortran-ordered arrays are not supported");
  size_t width = 0;
  if (descr == "'<f4'") {
    width = 4;
  } else if (descr == "'<f8'") {
    width = 8;
  } else {
    throw_bad_input(where, "dtype " + descr + " is not float32 or float64");
  }
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') {
    throw_bad_input(where, "bad shape " + shape);
  }
  Tensor t;
  std::stringstream dims(shape.substr(1, shape.size() - 2));
  std::string item;
  int64_t count = 1;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    size_t used = 0;
    int64_t d = -1;
    try {
      d = std::stoll(item, &used);
    } catch (const std::exception&) {
    }
    if (d < 0 || d > (int64_t{1} << 40) || (d > 0 && count > (int64_t{1} << 40) / d)) {
      throw_bad_input(where, "bad shape " + shape);
    }
    count *= d;
    t.shape.push_back(d);
  }
  const size_t data_at = start + header_len;
  if ((b.size() - data_at) / width < static_cast<uint64_t>(count)) {
    throw_bad_input(where, "truncated .npy data");
  }
  t.data.resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const char* p = b.data() + data_at + static_cast<size_t>(i) * width;
    if (width == 4) {
      std::memcpy(&t.data[static_cast<size_t>(i)], p, 4);
    } else {
      double v;
      std::memcpy(&v, p, 8);
      t.data[static_cast<size_t>(i)] = static_cast<float>(v);
    }
  }
  return t;
}

}  // namespace patchcore
