#include "model_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <utility>

#include "error.h"

// Debian's libxxhash picks the SSE2, AVX2 or AVX-512 kernel at run time through these names.
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif
#include <xxhash.h>

namespace fs = std::filesystem;
using nlohmann::json;

namespace patchcore {

// Tensor bytes are written and read as the machine holds them; the format is little-endian.
static_assert(std::endian::native == std::endian::little,
              "patchcore model files need a little-endian host");

namespace {

// A corrupt length field must not make us allocate gigabytes before we notice.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::string errno_text(int err) { return std::strerror(err); }

constexpr const char* kChecksumAlgorithm = "xxh3-64";

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t xxh3(const void* data, size_t size) { return XXH3_64bits(data, size); }

// XXH3-64 over bytes that arrive in pieces.
class Hasher {
 public:
  Hasher() : state_(XXH3_createState()) {
    if (state_ == nullptr) throw std::bad_alloc();
    XXH3_64bits_reset(state_);
  }
  ~Hasher() { XXH3_freeState(state_); }
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void update(const void* data, size_t size) { XXH3_64bits_update(state_, data, size); }
  uint64_t digest() const { return XXH3_64bits_digest(state_); }

 private:
  XXH3_state_t* state_;
};

// The header's checksum covers the length field too: a flipped length bit must not pass.
uint64_t header_hash(uint64_t header_len, const std::string& header) {
  Hasher h;
  h.update(&header_len, 8);
  h.update(header.data(), header.size());
  return h.digest();
}

// The checksum table: JSON, a newline, then the XXH3-64 of the JSON text in hex, so that a
// damaged table is told apart from the parts it describes.
std::string checksum_table(uint64_t header, const std::map<std::string, uint64_t>& metadata,
                           const std::map<std::string, uint64_t>& tensors) {
  json t = json::object();
  t["algorithm"] = kChecksumAlgorithm;
  t["header"] = hex64(header);
  t["metadata"] = json::object();
  for (const auto& [k, v] : metadata) t["metadata"][k] = hex64(v);
  t["tensors"] = json::object();
  for (const auto& [k, v] : tensors) t["tensors"][k] = hex64(v);
  const std::string text = t.dump();
  return text + "\n" + hex64(xxh3(text.data(), text.size()));
}

// Closes the descriptor on every path, including exceptions.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  /// Closes now so that the caller sees the error (close can report a failed delayed write).
  int close() {
    int r = ::close(fd_);
    fd_ = -1;
    return r;
  }

 private:
  int fd_;
};

// ---------------------------------------------------------------- writing

struct Entry {
  std::string name;
  const char* dtype;
  std::vector<int64_t> shape;
  const void* data;
  uint64_t bytes;
};

std::vector<Entry> collect_entries(const ModelFileContents& c) {
  std::vector<Entry> entries;
  for (const auto& [name, t] : c.f32) {
    PATCHCORE_ASSERT(!name.empty() && name != "__metadata__" && name != kChecksumTensor);
    PATCHCORE_ASSERT(Tensor::count(t.shape) == t.numel());
    for (int64_t d : t.shape) PATCHCORE_ASSERT(d >= 0);
    entries.push_back({name, "F32", t.shape, t.ptr(), static_cast<uint64_t>(t.numel()) * 4});
  }
  for (const auto& [name, blob] : c.u8) {
    PATCHCORE_ASSERT(!name.empty() && name != "__metadata__" && name != kChecksumTensor);
    PATCHCORE_ASSERT(!c.f32.contains(name));
    entries.push_back({name, "U8", {static_cast<int64_t>(blob.size())}, blob.data(), blob.size()});
  }
  // Byte order follows the name order: the same contents always give the same file.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.name < b.name; });
  return entries;
}

std::map<std::string, std::string> stored_metadata(const ModelFileContents& c) {
  std::map<std::string, std::string> meta = c.metadata;
  meta["format"] = kModelFormat;
  meta["format_version"] = std::to_string(kModelFormatVersion);
  return meta;
}

std::string build_header(const std::map<std::string, std::string>& metadata,
                         const std::vector<Entry>& entries) {
  json header = json::object();
  header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Entry& e : entries) {
    header[e.name] = {
        {"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes}}};
    offset += e.bytes;
  }
  std::string text = header.dump();
  // Tensor data then starts 8-byte aligned (8 + a multiple of 8), as safetensors recommends.
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_all(int fd, const void* data, uint64_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, 1u << 30));
    ssize_t n = ::write(fd, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category());
    }
    p += n;
    size -= static_cast<uint64_t>(n);
  }
}

// "<name>.tmp-<pid>-": the writer's pid in the name tells a temporary file that a killed
// process left behind from one that a running process is still writing.
std::string temp_prefix(const fs::path& file) { return file.filename().string() + ".tmp-"; }

fs::path temp_name(const fs::path& file) {
  std::random_device rd;
  std::uniform_int_distribution<uint64_t> dist;
  return file.parent_path() /
         (temp_prefix(file) + std::to_string(::getpid()) + "-" + hex64(dist(rd)));
}

// Removes the temporary files of `file` whose writer is gone (kill -9, power loss before the
// rename). A pid reused since then only keeps a leftover until the next write.
void remove_stale_temp_files(const fs::path& file) {
  const fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  const std::string prefix = temp_prefix(file);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;  // the write below reports the folder's problem
  std::vector<std::string> stale;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const char* first = name.data() + prefix.size();
    const char* last = name.data() + name.size();
    long pid = 0;
    auto [ptr, ec] = std::from_chars(first, last, pid);
    if (ec != std::errc() || ptr == last || *ptr != '-' || pid <= 0) continue;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) stale.push_back(name);
  }
  ::closedir(d);
  for (const std::string& name : stale) ::unlink((dir / name).c_str());
}

// ---------------------------------------------------------------- reading

std::string describe(const json& j) {
  std::string s = j.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

// Reads exactly size bytes at the current position; false when the file ends first.
bool read_exact(int fd, void* data, uint64_t size) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, 1u << 30));
    ssize_t n = ::read(fd, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return false;
    p += n;
    size -= static_cast<uint64_t>(n);
  }
  return true;
}

struct TensorInfo {
  std::string name;
  bool is_f32 = false;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

// Reads exactly size bytes at the current position into data, hashing them on the way in
// pieces that are still in cache; false when the file ends first.
bool read_hashed(int fd, void* data, uint64_t size, Hasher* hasher) {
  constexpr uint64_t kPiece = 1u << 20;
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const uint64_t n = std::min(size, kPiece);
    if (!read_exact(fd, p, n)) return false;
    if (hasher) hasher->update(p, n);
    p += n;
    size -= n;
  }
  return true;
}

class Reader {
 public:
  Reader(const fs::path& file, Checksums checksums)
      : file_(file), name_(file.string()), checksums_(checksums) {}

  ModelFileContents read() {
    int raw = ::open(file_.c_str(), O_RDONLY | O_CLOEXEC);
    if (raw < 0) {
      int err = errno;
      fail(err == ENOENT ? std::string("no such file") : "cannot open: " + errno_text(err));
    }
    Fd fd(raw);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) fail("cannot stat: " + errno_text(errno));
    if (S_ISDIR(st.st_mode)) fail("is a folder, not a model file");
    if (!S_ISREG(st.st_mode)) fail("not a regular file");
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    if (file_size == 0) fail("empty file, not a patchcore model");
    if (file_size < 8)
      fail("truncated or not a patchcore model: " + std::to_string(file_size) +
           " bytes, shorter than the 8-byte header length");

    uint64_t header_len = 0;
    if (!read_exact(fd.get(), &header_len, 8)) fail("read error in the header length");
    if (header_len > kMaxHeaderBytes)
      fail("not a patchcore model (or corrupt): header length field says " +
           std::to_string(header_len) + " bytes, more than the " + std::to_string(kMaxHeaderBytes) +
           " allowed");
    if (header_len > file_size - 8)
      fail("truncated or not a patchcore model: header length field says " +
           std::to_string(header_len) + " bytes, file has " + std::to_string(file_size - 8) +
           " after it");
    if (header_len < 2)
      fail("not a patchcore model: header of " + std::to_string(header_len) + " bytes");

    std::string text(header_len, '\0');
    if (!read_exact(fd.get(), text.data(), header_len)) fail("truncated while reading the header");
    if (text[0] != '{') fail("not a patchcore model: the header is not a JSON object");
    json header = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (header.is_discarded())
      fail("not a patchcore model or a damaged one: the header is not valid JSON");
    if (!header.is_object()) fail("not a patchcore model: the header is not a JSON object");

    ModelFileContents out;
    parse_metadata(header, out);
    const uint64_t data_size = file_size - 8 - header_len;
    std::vector<TensorInfo> tensors = parse_tensors(header);
    check_layout(tensors, data_size);
    const bool has_table = out.format_version >= 2;
    const TensorInfo* table_info = nullptr;
    if (has_table) {
      for (const TensorInfo& t : tensors)
        if (t.name == kChecksumTensor) table_info = &t;
      if (table_info == nullptr)
        fail("damaged or incomplete: format version " + std::to_string(out.format_version) +
             " files carry a checksum table ('" + kChecksumTensor + "'), this one has none");
      if (table_info->is_f32)
        fail(std::string("corrupt header: '") + kChecksumTensor + "' is not U8");
    }
    const bool verify = has_table && checksums_ == Checksums::verify;

    // Offsets are now known to tile [0, data_size) in order, so a sequential read fills them.
    std::map<std::string, uint64_t> hashes;
    std::string table;
    for (const TensorInfo& t : tensors) {
      const uint64_t bytes = t.end - t.begin;
      const bool is_table = has_table && &t == table_info;
      std::optional<Hasher> hasher;
      if (verify && !is_table) hasher.emplace();
      Hasher* h = hasher ? &*hasher : nullptr;
      bool ok = true;
      if (is_table) {
        table.resize(bytes);
        ok = read_exact(fd.get(), table.data(), bytes);
      } else if (t.is_f32) {
        Tensor tensor;
        tensor.shape = t.shape;
        tensor.data.resize(bytes / 4);
        ok = read_hashed(fd.get(), tensor.data.data(), bytes, h);
        out.f32.emplace(t.name, std::move(tensor));
      } else {
        std::vector<uint8_t> blob(bytes);
        ok = read_hashed(fd.get(), blob.data(), bytes, h);
        out.u8.emplace(t.name, std::move(blob));
      }
      if (!ok) fail("truncated while reading tensor '" + t.name + "' (the file shrank?)");
      if (h) hashes[t.name] = h->digest();
    }
    if (verify) verify_checksums(table, header_hash(header_len, text), out.metadata, hashes);
    out.checksums_verified = verify;
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw_bad_input(name_, what); }

  void parse_metadata(const json& header, ModelFileContents& out) const {
    auto it = header.find("__metadata__");
    if (it == header.end())
      fail("not a patchcore model: a safetensors-like file without __metadata__");
    if (!it->is_object()) fail("not a patchcore model: __metadata__ is not an object");
    for (const auto& [k, v] : it->items()) {
      if (k == "format_version" && v.is_number_integer()) {
        out.metadata[k] = std::to_string(v.get<int64_t>());
        continue;
      }
      if (!v.is_string()) fail("corrupt header: metadata value '" + k + "' is not a string");
      out.metadata[k] = v.get<std::string>();
    }
    auto format = out.metadata.find("format");
    if (format == out.metadata.end() || format->second != kModelFormat)
      fail("not a patchcore model (safetensors file without the patchcore format tag)");
    auto version = out.metadata.find("format_version");
    if (version == out.metadata.end()) fail("corrupt header: format_version is missing");
    const std::string& vs = version->second;
    int v = 0;
    auto [ptr, ec] = std::from_chars(vs.data(), vs.data() + vs.size(), v);
    if (ec != std::errc() || ptr != vs.data() + vs.size() || v < 1)
      fail("corrupt header: format_version '" + vs + "' is not a positive integer");
    if (v > kModelFormatVersion)
      fail("model format version " + vs + " is newer than this patchcore supports (version " +
           std::to_string(kModelFormatVersion) + "); upgrade patchcore to load it");
    out.format_version = v;
  }

  // Which part is damaged: the table itself, then the header (narrowed down to a metadata
  // entry where one differs), then each tensor.
  void verify_checksums(const std::string& table, uint64_t header,
                        const std::map<std::string, std::string>& metadata,
                        const std::map<std::string, uint64_t>& tensors) const {
    const std::string table_name = std::string("the checksum table ('") + kChecksumTensor + "')";
    const size_t nl = table.rfind('\n');
    if (nl == std::string::npos || table.size() - nl - 1 != 16 ||
        table.substr(nl + 1) != hex64(xxh3(table.data(), nl)))
      fail("damaged: " + table_name + " does not match its own checksum");
    const json t = json::parse(table.substr(0, nl), nullptr, /*allow_exceptions=*/false);
    auto hex_map = [](const json& j, const char* key) {
      auto it = j.find(key);
      if (it == j.end() || !it->is_object()) return false;
      return std::all_of(it->begin(), it->end(), [](const json& v) { return v.is_string(); });
    };
    if (!t.is_object() || !t.contains("algorithm") || t["algorithm"] != kChecksumAlgorithm ||
        !t.contains("header") || !t["header"].is_string() || !hex_map(t, "metadata") ||
        !hex_map(t, "tensors"))
      fail(table_name + " is not in the form format version 2 defines (algorithm " +
           kChecksumAlgorithm + ", header, metadata, tensors)");
    if (t["header"].get<std::string>() != hex64(header)) {
      const json& listed = t["metadata"];
      for (const auto& [k, v] : listed.items()) {
        auto it = metadata.find(k);
        if (it == metadata.end())
          fail("damaged: the header lacks metadata entry '" + k + "' (a damaged name?)");
        if (v.get<std::string>() != hex64(xxh3(it->second.data(), it->second.size())))
          fail("damaged: metadata entry '" + k + "' does not match its checksum");
      }
      for (const auto& [k, v] : metadata)
        if (!listed.contains(k))
          fail("damaged: metadata entry '" + k + "' is not in the checksum table");
      fail(
          "damaged: the header (its tensor list, shapes, offsets or length) does not match "
          "its checksum");
    }
    const json& listed = t["tensors"];
    for (const auto& [name, hash] : tensors) {
      if (!listed.contains(name))
        fail("damaged: tensor '" + name + "' is not in the checksum table");
      if (listed[name].get<std::string>() != hex64(hash))
        fail("damaged: tensor '" + name + "' does not match its checksum");
    }
    if (listed.size() != tensors.size())
      fail(table_name + " lists tensors that the header does not");
  }

  std::vector<TensorInfo> parse_tensors(const json& header) const {
    std::vector<TensorInfo> tensors;
    for (const auto& [name, spec] : header.items()) {
      if (name == "__metadata__") continue;
      const std::string where = "tensor '" + name + "'";
      if (!spec.is_object()) fail("corrupt header: " + where + " is not an object");
      auto dtype = spec.find("dtype");
      auto shape = spec.find("shape");
      auto offsets = spec.find("data_offsets");
      if (dtype == spec.end() || shape == spec.end() || offsets == spec.end())
        fail("corrupt header: " + where + " lacks dtype, shape or data_offsets");
      TensorInfo t;
      t.name = name;
      if (!dtype->is_string()) fail("corrupt header: " + where + " has a non-string dtype");
      const std::string d = dtype->get<std::string>();
      if (d == "F32") {
        t.is_f32 = true;
      } else if (d != "U8") {
        fail(where + " has unsupported dtype " + describe(*dtype) + " (expected F32 or U8)");
      }
      if (!shape->is_array()) fail("corrupt header: " + where + " has a shape that is not a list");
      // The element count is bounded by the file size, so give up before it can overflow.
      uint64_t count = 1;
      bool huge = false, zero = false;
      for (const json& dim : *shape) {
        if (!dim.is_number_unsigned() || dim.get<uint64_t>() > (1ull << 53))
          fail("corrupt header: " + where + " has a bad shape " + describe(*shape));
        const uint64_t n = dim.get<uint64_t>();
        zero = zero || n == 0;
        if (n != 0 && count > (1ull << 60) / n) huge = true;
        if (!huge) count *= n;
        t.shape.push_back(static_cast<int64_t>(n));
      }
      if (zero) huge = false, count = 0;
      if (!offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
          !(*offsets)[1].is_number_unsigned())
        fail("corrupt header: " + where + " has bad data_offsets " + describe(*offsets));
      t.begin = (*offsets)[0].get<uint64_t>();
      t.end = (*offsets)[1].get<uint64_t>();
      if (t.end < t.begin)
        fail("corrupt header: " + where + " ends before it begins " + describe(*offsets));
      const uint64_t elem = t.is_f32 ? 4 : 1;
      if (huge || count * elem != t.end - t.begin)
        fail("corrupt header: " + where + " has shape " + describe(*shape) + " of " + d + " but " +
             std::to_string(t.end - t.begin) + " bytes");
      tensors.push_back(std::move(t));
    }
    return tensors;
  }

  void check_layout(std::vector<TensorInfo>& tensors, uint64_t data_size) const {
    std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
    });
    uint64_t expected = 0;
    for (const TensorInfo& t : tensors) {
      if (t.begin < expected)
        fail("corrupt header: tensor '" + t.name + "' overlaps the previous tensor (starts at " +
             std::to_string(t.begin) + ", previous ends at " + std::to_string(expected) + ")");
      if (t.begin > expected)
        fail("corrupt header: a gap of " + std::to_string(t.begin - expected) +
             " bytes before tensor '" + t.name + "'");
      expected = t.end;
    }
    if (expected > data_size)
      fail("truncated: header says " + std::to_string(expected) + " bytes of tensors, file has " +
           std::to_string(data_size));
    if (expected < data_size)
      fail("corrupt: " + std::to_string(data_size - expected) +
           " bytes of trailing garbage after the last tensor");
  }

  fs::path file_;
  std::string name_;
  Checksums checksums_;
};

}  // namespace

void write_model_file(const fs::path& file, const ModelFileContents& contents) {
  std::vector<Entry> entries = collect_entries(contents);
  const std::map<std::string, std::string> metadata = stored_metadata(contents);
  std::map<std::string, uint64_t> metadata_hashes, tensor_hashes;
  for (const auto& [k, v] : metadata) metadata_hashes[k] = xxh3(v.data(), v.size());
  for (const Entry& e : entries) tensor_hashes[e.name] = xxh3(e.data, e.bytes);
  // The table's size does not depend on the hash values, so the header can describe it before
  // the header's own hash is known.
  const uint64_t table_bytes = checksum_table(0, metadata_hashes, tensor_hashes).size();
  entries.push_back(
      {kChecksumTensor, "U8", {static_cast<int64_t>(table_bytes)}, nullptr, table_bytes});
  const std::string header = build_header(metadata, entries);
  const std::string table =
      checksum_table(header_hash(header.size(), header), metadata_hashes, tensor_hashes);
  PATCHCORE_ASSERT(table.size() == table_bytes);
  entries.back().data = table.data();

  remove_stale_temp_files(file);
  const fs::path tmp = temp_name(file);
  int raw = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (raw < 0) {
    int err = errno;
    throw_bad_input(file.string(), "cannot write the model file: " + errno_text(err));
  }
  try {
    Fd fd(raw);
    const uint64_t header_len = header.size();
    write_all(fd.get(), &header_len, 8);
    write_all(fd.get(), header.data(), header.size());
    for (const Entry& e : entries) write_all(fd.get(), e.data, e.bytes);
    // Data on disk before the rename makes it visible: a crash then leaves old or new, not half.
    if (::fsync(fd.get()) != 0) throw std::system_error(errno, std::generic_category());
    if (fd.close() != 0) throw std::system_error(errno, std::generic_category());
    if (::rename(tmp.c_str(), file.c_str()) != 0)
      throw std::system_error(errno, std::generic_category());
  } catch (const std::system_error& e) {
    ::unlink(tmp.c_str());
    throw_bad_input(file.string(),
                    std::string("cannot write the model file: ") + errno_text(e.code().value()));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable; failure here leaves a complete file, so it is not an error.
  fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

ModelFileContents read_model_file(const fs::path& file, Checksums checksums) {
  return Reader(file, checksums).read();
}

}  // namespace patchcore
