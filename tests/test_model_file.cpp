#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <nlohmann/json.hpp>

#include "error.h"
#include "model_file.h"
#include "test_support.h"

namespace fs = std::filesystem;
using nlohmann::json;
using patchcore::Error;
using patchcore::ErrorKind;
using patchcore::ModelFileContents;
using patchcore::read_model_file;
using patchcore::Tensor;
using patchcore::write_model_file;
using patchcore::testing::read_bytes;
using patchcore::testing::TempDir;
using patchcore::testing::write_bytes;

namespace {

ModelFileContents sample_contents() {
  ModelFileContents c;
  c.metadata["backbone"] = "mobilenet_v2";
  c.metadata["image_size"] = "224";
  c.metadata["threshold"] = "1.25";
  c.metadata["unicode"] = "caf\xc3\xa9 \"quoted\"\n";
  Tensor bank({5, 3});
  for (int64_t i = 0; i < bank.numel(); ++i) bank.data[i] = 0.5f * static_cast<float>(i) - 3.0f;
  bank.data[4] = -0.0f;
  bank.data[7] = 1e-38f;
  c.f32["memory_bank"] = bank;
  Tensor minmax({2});
  minmax.data = {-1.5f, 7.25f};
  c.f32["minmax"] = minmax;
  c.f32["empty"] = Tensor({0, 4});
  c.u8["backbone_onnx"] = {0, 1, 2, 255, 128, 7, 9};
  c.u8["nothing"] = {};
  return c;
}

// The message must name the file; returns it for further checks.
std::string expect_bad_input(const fs::path& file) {
  return patchcore::testing::expect_bad_input_naming(file, [&] { read_model_file(file); });
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

// A safetensors-layout file from a header and data section, to craft broken files.
std::string raw_file(const json& header, const std::string& data) {
  const std::string h = header.dump();
  return le64(h.size()) + h + data;
}

json patchcore_meta(const std::string& version = "1") {
  return {{"format", "patchcore"}, {"format_version", version}};
}

// A valid one-tensor file: "a" F32 [2] at [0, 8).
json valid_header() {
  return {{"__metadata__", patchcore_meta()},
          {"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}}};
}

}  // namespace

TEST(ModelFile, RoundTrip) {
  TempDir dir;
  const fs::path file = dir / "model.patchcore";
  const ModelFileContents c = sample_contents();
  write_model_file(file, c);
  const ModelFileContents r = read_model_file(file);

  for (const auto& [k, v] : c.metadata) EXPECT_EQ(r.metadata.at(k), v) << k;
  EXPECT_EQ(r.metadata.at("format"), "patchcore");
  EXPECT_EQ(r.metadata.at("format_version"), std::to_string(patchcore::kModelFormatVersion));
  EXPECT_EQ(r.metadata.size(), c.metadata.size() + 2);

  ASSERT_EQ(r.f32.size(), 3u);
  for (const auto& [name, t] : c.f32) {
    const Tensor& got = r.f32.at(name);
    EXPECT_EQ(got.shape, t.shape) << name;
    ASSERT_EQ(got.numel(), t.numel()) << name;
    // Bit-exact, including -0 and denormal-range values.
    EXPECT_EQ(std::memcmp(got.ptr(), t.ptr(), t.data.size() * 4), 0) << name;
  }
  EXPECT_EQ(r.f32.at("empty").shape, (std::vector<int64_t>{0, 4}));
  ASSERT_EQ(r.u8.size(), 2u);
  EXPECT_EQ(r.u8.at("backbone_onnx"), c.u8.at("backbone_onnx"));
  EXPECT_TRUE(r.u8.at("nothing").empty());
}

TEST(ModelFile, LayoutIsSafetensorsAndDeterministic) {
  TempDir dir;
  write_model_file(dir / "a", sample_contents());
  write_model_file(dir / "b", sample_contents());
  const std::string bytes = read_bytes(dir / "a");
  EXPECT_EQ(bytes, read_bytes(dir / "b"));

  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_LE(8 + n, bytes.size());
  const std::string text = bytes.substr(8, n);
  EXPECT_EQ(text.find_last_not_of(' ') + 1, text.find_last_of('}') + 1);
  const json h = json::parse(text);
  EXPECT_EQ(h["__metadata__"]["format"], "patchcore");
  EXPECT_EQ(h["memory_bank"]["dtype"], "F32");
  EXPECT_EQ(h["memory_bank"]["shape"], json({5, 3}));
  EXPECT_EQ(h["backbone_onnx"]["dtype"], "U8");
  // Tensors are contiguous in name order and exactly fill the rest of the file.
  uint64_t expected = 0;
  for (const char* name :
       {"backbone_onnx", "empty", "memory_bank", "minmax", "nothing", patchcore::kChecksumTensor}) {
    EXPECT_EQ(h[name]["data_offsets"][0].get<uint64_t>(), expected) << name;
    expected = h[name]["data_offsets"][1].get<uint64_t>();
  }
  EXPECT_EQ(8 + n + expected, bytes.size());
  // The memory bank's bytes are where the header says.
  const uint64_t begin = h["memory_bank"]["data_offsets"][0].get<uint64_t>();
  float first = 0;
  std::memcpy(&first, bytes.data() + 8 + n + begin, 4);
  EXPECT_EQ(first, -3.0f);
}

TEST(ModelFile, EmptyContents) {
  TempDir dir;
  write_model_file(dir / "m", ModelFileContents{});
  const ModelFileContents r = read_model_file(dir / "m");
  EXPECT_TRUE(r.f32.empty());
  EXPECT_TRUE(r.u8.empty());
  EXPECT_EQ(r.metadata.at("format"), "patchcore");
}

TEST(ModelFile, LargeTensorRoundTrip) {
  TempDir dir;
  ModelFileContents c;
  Tensor bank({3000, 257});
  for (int64_t i = 0; i < bank.numel(); ++i) bank.data[i] = static_cast<float>(i % 9973) * 0.37f;
  c.f32["memory_bank"] = bank;
  write_model_file(dir / "m", c);
  EXPECT_EQ(read_model_file(dir / "m").f32.at("memory_bank").data, bank.data);
}

ModelFileContents small_contents() {
  ModelFileContents c;
  c.metadata["k"] = "v";
  Tensor t({2, 2});
  t.data = {1, 2, 3, 4};
  c.f32["t"] = t;
  c.u8["b"] = {1, 2, 3};
  return c;
}

TEST(ModelFile, EveryTruncationIsAnError) {
  TempDir dir;
  write_model_file(dir / "full", small_contents());
  const std::string bytes = read_bytes(dir / "full");
  ASSERT_GT(bytes.size(), 40u);
  const fs::path cut = dir / "model.patchcore";
  for (size_t len = 0; len < bytes.size(); ++len) {
    write_bytes(cut, bytes.substr(0, len));
    SCOPED_TRACE("length " + std::to_string(len));
    expect_bad_input(cut);
  }
  // Cut inside the tensor data: the message says how much is missing.
  write_bytes(cut, bytes.substr(0, bytes.size() - 5));
  const std::string msg = expect_bad_input(cut);
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(ModelFile, BitFlipsInHeaderNeverCrash) {
  TempDir dir;
  write_model_file(dir / "full", small_contents());
  const std::string bytes = read_bytes(dir / "full");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const fs::path f = dir / "flipped";
  size_t errors = 0;
  for (size_t pos = 0; pos < 8 + n; ++pos) {
    std::string b = bytes;
    b[pos] = static_cast<char>(b[pos] ^ (1 << (pos % 8)));
    write_bytes(f, b);
    try {
      read_model_file(f);  // a flip inside a metadata string or in the padding can stay valid
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::bad_input) << e.what();
      ++errors;
    }
  }
  EXPECT_GT(errors, (8 + n) / 2);  // most flips break the structure
}

TEST(ModelFile, ForeignSafetensors) {
  TempDir dir;
  const fs::path f = dir / "foreign.safetensors";
  json h = {{"weight", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}};
  write_bytes(f, raw_file(h, std::string(4, '\0')));
  EXPECT_NE(expect_bad_input(f).find("not a patchcore model"), std::string::npos);

  h["__metadata__"] = {{"format", "pt"}};
  write_bytes(f, raw_file(h, std::string(4, '\0')));
  EXPECT_NE(expect_bad_input(f).find("not a patchcore model"), std::string::npos);
}

TEST(ModelFile, ValidCraftedFileLoads) {
  // Guards the crafted-file helpers: the variants below fail for their one defect only.
  TempDir dir;
  const fs::path f = dir / "ok";
  write_bytes(f, raw_file(valid_header(), std::string(8, '\0')));
  EXPECT_EQ(read_model_file(f).f32.at("a").data, (std::vector<float>{0, 0}));
  // Unpadded headers, integer format_version and offsets out of name order are all fine.
  json h = valid_header();
  h["__metadata__"]["format_version"] = 1;
  h["b"] = {{"dtype", "U8"}, {"shape", {2}}, {"data_offsets", {0, 2}}};
  h["a"]["data_offsets"] = {2, 10};
  write_bytes(f, raw_file(h, std::string(10, '\x01')));
  const ModelFileContents r = read_model_file(f);
  EXPECT_EQ(r.u8.at("b"), (std::vector<uint8_t>{1, 1}));
  EXPECT_EQ(r.f32.at("a").data.size(), 2u);
}

TEST(ModelFile, NewerFormatVersion) {
  TempDir dir;
  const fs::path f = dir / "new.patchcore";
  json h = valid_header();
  h["__metadata__"]["format_version"] = std::to_string(patchcore::kModelFormatVersion + 1);
  write_bytes(f, raw_file(h, std::string(8, '\0')));
  const std::string msg = expect_bad_input(f);
  EXPECT_NE(msg.find("version 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("upgrade patchcore"), std::string::npos) << msg;

  for (const char* bad : {"x", "0", "-1", "1.5", ""}) {
    h["__metadata__"]["format_version"] = bad;
    write_bytes(f, raw_file(h, std::string(8, '\0')));
    expect_bad_input(f);
  }
  h["__metadata__"].erase("format_version");
  write_bytes(f, raw_file(h, std::string(8, '\0')));
  expect_bad_input(f);
}

TEST(ModelFile, InconsistentTensors) {
  TempDir dir;
  const fs::path f = dir / "bad.patchcore";
  auto check = [&](const json& h, size_t data_bytes, const std::string& expect) {
    write_bytes(f, raw_file(h, std::string(data_bytes, '\0')));
    const std::string msg = expect_bad_input(f);
    EXPECT_NE(msg.find(expect), std::string::npos) << h.dump() << " -> " << msg;
  };
  json h = valid_header();
  h["b"] = {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {4, 8}}};
  h["a"]["data_offsets"] = {0, 8};
  check(h, 8, "overlaps");

  h = valid_header();
  h["a"]["data_offsets"] = {4, 12};
  check(h, 12, "gap");
  check(valid_header(), 6, "truncated");
  check(valid_header(), 12, "trailing");

  h = valid_header();
  h["a"]["data_offsets"] = {0, 1ull << 62};
  check(h, 8, "a");
  h["a"]["data_offsets"] = {8, 0};
  check(h, 8, "ends before");
  h["a"]["data_offsets"] = {0};
  check(h, 8, "data_offsets");
  h["a"]["data_offsets"] = {-1, 7};
  check(h, 8, "data_offsets");

  h = valid_header();
  h["a"]["shape"] = {3};
  check(h, 8, "shape");
  h["a"]["shape"] = {1ull << 40, 1ull << 40, 1ull << 40};
  check(h, 8, "shape");
  h["a"]["shape"] = {-2, -1};
  check(h, 8, "shape");
  h["a"]["shape"] = "2";
  check(h, 8, "shape");

  h = valid_header();
  h["a"]["dtype"] = "F16";
  check(h, 8, "dtype");
  h["a"].erase("dtype");
  check(h, 8, "dtype");
  h = valid_header();
  h["a"] = 5;
  check(h, 8, "'a'");

  h = valid_header();
  h["__metadata__"]["x"] = 3;
  check(h, 8, "not a string");
}

TEST(ModelFile, NotJsonAndOtherGarbage) {
  TempDir dir;
  const fs::path f = dir / "garbage.patchcore";
  const std::string not_json = "{this is not json}      ";
  write_bytes(f, le64(not_json.size()) + not_json);
  EXPECT_NE(expect_bad_input(f).find("JSON"), std::string::npos);

  write_bytes(f, le64(4) + "[1] ");
  expect_bad_input(f);

  // A PNG header read as a length is absurdly large; it must fail before allocating it.
  write_bytes(f, std::string("\x89PNG\r\n\x1a\n", 8) + std::string(100, 'x'));
  expect_bad_input(f);
  write_bytes(f, le64(~0ull) + "{}");
  expect_bad_input(f);
  write_bytes(f, le64(200ull << 20) + "{}");
  EXPECT_NE(expect_bad_input(f).find("header length"), std::string::npos);

  write_bytes(f, "");
  EXPECT_NE(expect_bad_input(f).find("empty"), std::string::npos);
  write_bytes(f, "abc");
  expect_bad_input(f);
  write_bytes(f, le64(0));
  expect_bad_input(f);
}

TEST(ModelFile, MissingFileAndFolder) {
  TempDir dir;
  EXPECT_NE(expect_bad_input(dir / "missing.patchcore").find("no such file"), std::string::npos);
  EXPECT_NE(expect_bad_input(dir.path()).find("folder"), std::string::npos);
}

namespace {

std::vector<std::string> folder_entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void expect_write_fails(const fs::path& file, const ModelFileContents& c) {
  try {
    write_model_file(file, c);
    ADD_FAILURE() << "writing " << file << " did not fail";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input);
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(ModelFile, AtomicReplace) {
  TempDir dir;
  const fs::path file = dir / "model.patchcore";
  write_model_file(file, sample_contents());
  ModelFileContents c2;
  c2.metadata["second"] = "yes";
  write_model_file(file, c2);  // replaces the existing file
  EXPECT_EQ(read_model_file(file).metadata.at("second"), "yes");
  EXPECT_EQ(folder_entries(dir.path()), std::vector<std::string>{"model.patchcore"});
}

TEST(ModelFile, WriteIntoMissingFolderFails) {
  TempDir dir;
  expect_write_fails(dir / "no" / "such" / "model.patchcore", sample_contents());
  EXPECT_TRUE(folder_entries(dir.path()).empty());
}

TEST(ModelFile, FailedWriteKeepsOldContentAndLeavesNoTempFile) {
  TempDir dir;
  const fs::path file = dir / "model.patchcore";
  write_model_file(file, sample_contents());
  const std::string before = read_bytes(file);

  // A file size limit makes the write itself fail half way (EFBIG), like a full disk.
  ModelFileContents big;
  big.u8["blob"] = std::vector<uint8_t>(1 << 20, 42);
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 64 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  expect_write_fails(file, big);
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);

  EXPECT_EQ(read_bytes(file), before);
  EXPECT_EQ(folder_entries(dir.path()), std::vector<std::string>{"model.patchcore"});

  // The target being a folder: rename fails after the data was written.
  const fs::path folder = dir / "taken";
  fs::create_directory(folder);
  expect_write_fails(folder, sample_contents());
  EXPECT_TRUE(fs::is_directory(folder));
  EXPECT_EQ(folder_entries(dir.path()), (std::vector<std::string>{"model.patchcore", "taken"}));
}

TEST(ModelFile, ReadOnlyFolder) {
  if (geteuid() == 0) GTEST_SKIP() << "root ignores folder permissions";
  TempDir dir;
  const fs::path sub = dir / "ro";
  fs::create_directory(sub);
  write_model_file(sub / "m", sample_contents());
  const std::string before = read_bytes(sub / "m");
  fs::permissions(sub, fs::perms::owner_read | fs::perms::owner_exec);
  expect_write_fails(sub / "m", ModelFileContents{});
  fs::permissions(sub, fs::perms::owner_all);
  EXPECT_EQ(read_bytes(sub / "m"), before);
  EXPECT_EQ(folder_entries(sub), std::vector<std::string>{"m"});
}

// ---------------------------------------------------------------- checksums (format version 2)

TEST(ModelFileChecksums, EveryByteIsCovered) {
  // Any single flipped bit, anywhere in the file, is refused: nothing loads silently.
  TempDir dir;
  write_model_file(dir / "full", sample_contents());
  const std::string bytes = read_bytes(dir / "full");
  const fs::path f = dir / "flipped.patchcore";
  for (size_t pos = 0; pos < bytes.size(); ++pos) {
    std::string b = bytes;
    b[pos] = static_cast<char>(b[pos] ^ (1 << (pos % 8)));
    write_bytes(f, b);
    SCOPED_TRACE("byte " + std::to_string(pos));
    expect_bad_input(f);
  }
}

TEST(ModelFileChecksums, TheMessageNamesTheDamagedPart) {
  TempDir dir;
  write_model_file(dir / "full", sample_contents());
  const std::string bytes = read_bytes(dir / "full");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json h = json::parse(bytes.substr(8, n));
  const fs::path f = dir / "damaged.patchcore";
  auto damage = [&](size_t pos, char value) {
    std::string b = bytes;
    ASSERT_NE(b[pos], value);
    b[pos] = value;
    write_bytes(f, b);
  };
  for (const char* tensor : {"memory_bank", "backbone_onnx", "minmax"}) {
    damage(8 + n + h[tensor]["data_offsets"][0].get<size_t>() + 1, '\x55');
    EXPECT_NE(expect_bad_input(f).find(std::string("tensor '") + tensor + "'"), std::string::npos);
  }
  // A metadata value, the padding of the header, the table.
  damage(8 + bytes.substr(8, n).find("1.25") + 2, '3');
  EXPECT_NE(expect_bad_input(f).find("metadata entry 'threshold'"), std::string::npos);
  ASSERT_EQ(bytes[8 + n - 1], ' ');
  damage(7 + n, '\t');  // still valid JSON
  EXPECT_NE(expect_bad_input(f).find("the header"), std::string::npos);
  damage(bytes.size() - 20, bytes[bytes.size() - 20] == '0' ? '1' : '0');
  EXPECT_NE(expect_bad_input(f).find("checksum table"), std::string::npos);
}

TEST(ModelFileChecksums, VersionOneFilesLoadWithoutChecksums) {
  TempDir dir;
  const fs::path f = dir / "v1.patchcore";
  write_bytes(f, raw_file(valid_header(), std::string(8, '\0')));
  const ModelFileContents r = read_model_file(f);
  EXPECT_EQ(r.format_version, 1);
  EXPECT_FALSE(r.checksums_verified);
  write_model_file(dir / "v2.patchcore", small_contents());
  const ModelFileContents v2 = read_model_file(dir / "v2.patchcore");
  EXPECT_EQ(v2.format_version, 2);
  EXPECT_TRUE(v2.checksums_verified);
  EXPECT_FALSE(v2.u8.count(patchcore::kChecksumTensor)) << "the table is not returned";
  // Without its table a version 2 file is refused; with ignore it loads for re-sealing.
  json h = valid_header();
  h["__metadata__"]["format_version"] = "2";
  write_bytes(f, raw_file(h, std::string(8, '\0')));
  EXPECT_NE(expect_bad_input(f).find("checksum table"), std::string::npos);
  std::string b = read_bytes(dir / "v2.patchcore");
  b[b.size() - 30] = static_cast<char>(b[b.size() - 30] ^ 1);
  write_bytes(f, b);
  expect_bad_input(f);
  EXPECT_EQ(read_model_file(f, patchcore::Checksums::ignore).metadata.at("k"), "v");
}

namespace {

pid_t dead_pid() {
  const pid_t pid = fork();
  if (pid == 0) _exit(0);
  int status = 0;
  waitpid(pid, &status, 0);
  return pid;
}

}  // namespace

TEST(ModelFileChecksums, TemporaryFilesOfKilledWritersAreRemoved) {
  TempDir dir;
  const fs::path file = dir / "m.patchcore";
  const std::string dead = std::to_string(dead_pid());
  const std::string live = std::to_string(getpid());
  for (const std::string& name :
       {"m.patchcore.tmp-" + dead + "-0123456789abcdef",      // a killed writer's
        "m.patchcore.tmp-" + live + "-0123456789abcdef",      // a running writer's
        "other.patchcore.tmp-" + dead + "-0123456789abcdef",  // another target's
        std::string("m.patchcore.tmp-0123456789abcdef")})     // no pid: not ours to judge
    write_bytes(dir / name, "partial");
  write_model_file(file, small_contents());
  EXPECT_EQ(folder_entries(dir.path()),
            (std::vector<std::string>{"m.patchcore", "m.patchcore.tmp-0123456789abcdef",
                                      "m.patchcore.tmp-" + live + "-0123456789abcdef",
                                      "other.patchcore.tmp-" + dead + "-0123456789abcdef"}));
}

TEST(ModelFileChecksums, KillDuringTheWriteKeepsTheOldFile) {
  // A writer killed with SIGKILL half way through its temporary file: the target keeps its
  // old bytes, and the next write removes the leftover.
  TempDir dir;
  const fs::path file = dir / "m.patchcore";
  write_model_file(file, small_contents());
  const std::string before = read_bytes(file);
  const pid_t pid = fork();
  if (pid == 0) {
    ModelFileContents big;
    big.u8["blob"] = std::vector<uint8_t>(256u << 20, 7);
    write_model_file(file, big);
    _exit(0);
  }
  ASSERT_GT(pid, 0);
  // Kill once the temporary file has grown past its first bytes: mid-write.
  for (int i = 0; i < 20000; ++i) {
    bool writing = false;
    for (const auto& e : fs::directory_iterator(dir.path()))
      if (e.path().filename().string().find(".tmp-") != std::string::npos && e.file_size() > 4096)
        writing = true;
    if (writing) break;
    usleep(500);
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the write ended before the kill";
  EXPECT_EQ(read_bytes(file), before);
  EXPECT_EQ(folder_entries(dir.path()).size(), 2u) << "the killed writer's temporary file";
  write_model_file(file, small_contents());
  EXPECT_EQ(folder_entries(dir.path()), std::vector<std::string>{"m.patchcore"});
}
