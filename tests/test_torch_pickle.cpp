// The .pth reader: real torch.save files (zip and legacy formats, made by
// scripts/make_torch_fixtures.py), hand-built pickles for strides, offsets and half floats,
// crafted malicious pickles, and fuzzing by truncation and bit flips (never a crash).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "error.h"
#include "test_support.h"
#include "torch_pickle.h"

namespace patchcore {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(PATCHCORE_SOURCE_DIR) / "tests" / "fixtures" / "torch";

// ---------------------------------------------------------------------------------------------
// A minimal zip writer (stored entries) with its own bit-at-a-time CRC as a reference.

uint32_t reference_crc(const std::string& s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char ch : s) {
    c ^= ch;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

void put16(std::string& s, uint32_t v) {
  s += static_cast<char>(v & 0xFF);
  s += static_cast<char>((v >> 8) & 0xFF);
}
void put32(std::string& s, uint32_t v) {
  put16(s, v & 0xFFFF);
  put16(s, v >> 16);
}

std::string make_zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string z, cd;
  for (const auto& [name, data] : entries) {
    const uint32_t offset = static_cast<uint32_t>(z.size());
    const uint32_t crc = crc32(data);  // checked against reference_crc in Crc32.*
    put32(z, 0x04034b50);
    put16(z, 20), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0);
    put32(z, crc), put32(z, static_cast<uint32_t>(data.size()));
    put32(z, static_cast<uint32_t>(data.size()));
    put16(z, static_cast<uint32_t>(name.size())), put16(z, 0);
    z += name + data;
    put32(cd, 0x02014b50);
    put16(cd, 20), put16(cd, 20), put16(cd, 0), put16(cd, 0), put16(cd, 0), put16(cd, 0);
    put32(cd, crc), put32(cd, static_cast<uint32_t>(data.size()));
    put32(cd, static_cast<uint32_t>(data.size()));
    put16(cd, static_cast<uint32_t>(name.size())), put16(cd, 0), put16(cd, 0), put16(cd, 0);
    put16(cd, 0), put32(cd, 0), put32(cd, offset);
    cd += name;
  }
  const uint32_t cd_offset = static_cast<uint32_t>(z.size());
  z += cd;
  put32(z, 0x06054b50);
  put16(z, 0), put16(z, 0);
  put16(z, static_cast<uint32_t>(entries.size())), put16(z, static_cast<uint32_t>(entries.size()));
  put32(z, static_cast<uint32_t>(cd.size())), put32(z, cd_offset), put16(z, 0);
  return z;
}

// ---------------------------------------------------------------------------------------------
// A pickle builder for hand-made state_dicts.

struct Pickle {
  std::string b = std::string("\x80\x02", 2);
  Pickle& op(char c) {
    b += c;
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) {
    b += "c" + module + "\n" + name + "\n";
    return *this;
  }
  Pickle& str(const std::string& s) {
    b += 'X';
    put32(b, static_cast<uint32_t>(s.size()));
    b += s;
    return *this;
  }
  Pickle& integer(int v) {  // BININT1 / BININT2
    if (v < 256) {
      b += 'K';
      b += static_cast<char>(v);
    } else {
      b += 'M';
      put16(b, static_cast<uint32_t>(v));
    }
    return *this;
  }
  Pickle& int_tuple(const std::vector<int>& v) {
    op('(');
    for (int x : v) integer(x);
    return op('t');
  }
  // key -> _rebuild_tensor_v2(storage(type, key, numel), offset, size, stride, False, {})
  Pickle& tensor(const std::string& name, const std::string& storage_type, const std::string& key,
                 int numel, int offset, const std::vector<int>& size,
                 const std::vector<int>& stride) {
    str(name).global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", storage_type).str(key).str("cpu").integer(numel);
    op('t').op('Q');
    integer(offset).int_tuple(size).int_tuple(stride).op('\x89');
    global("collections", "OrderedDict").op(')').op('R');
    return op('t').op('R');
  }
  Pickle& begin_dict() { return global("collections", "OrderedDict").op(')').op('R').op('('); }
  std::string end_dict() { return b + "u."; }
};

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::string torch_zip(const std::string& pickle,
                      const std::vector<std::pair<std::string, std::string>>& storages) {
  std::vector<std::pair<std::string, std::string>> entries = {{"archive/data.pkl", pickle}};
  for (const auto& [k, v] : storages) entries.emplace_back("archive/data/" + k, v);
  entries.emplace_back("archive/version", "3\n");
  return make_zip(entries);
}

std::string error_of(const std::string& bytes) {
  try {
    parse_torch_state_dict(bytes, "evil.pth");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input) << e.what();
    return e.what();
  }
  return "";
}

// ---------------------------------------------------------------------------------------------

TEST(Crc32, MatchesTheBitwiseReferenceAndKnownValue) {
  EXPECT_EQ(crc32("123456789"), 0xCBF43926u);
  std::mt19937 rng(1);
  std::string s(1000, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  EXPECT_EQ(crc32(s), reference_crc(s));
  EXPECT_EQ(crc32(""), 0u);
}

TEST(TorchPickle, ReadsTorchSaveZipFile) {
  const StateDict sd = load_torch_state_dict(kFixtures / "tiny_basic.pth");
  ASSERT_TRUE(sd.count("conv1.weight"));
  EXPECT_EQ(sd.at("conv1.weight").shape, (std::vector<int64_t>{8, 3, 7, 7}));
  EXPECT_EQ(sd.at("layer2.0.downsample.0.weight").shape, (std::vector<int64_t>{16, 8, 1, 1}));
  EXPECT_EQ(sd.at("fc.weight").shape, (std::vector<int64_t>{10, 32}));
  // int64 storage, set to 7 by the fixture script
  ASSERT_TRUE(sd.count("bn1.num_batches_tracked"));
  EXPECT_TRUE(sd.at("bn1.num_batches_tracked").shape.empty());
  EXPECT_EQ(sd.at("bn1.num_batches_tracked").data, std::vector<float>{7.0f});
  // running_var in [0.5, 1.5) by construction
  for (float v : sd.at("layer1.1.bn2.running_var").data) {
    EXPECT_GE(v, 0.5f);
    EXPECT_LT(v, 1.5f);
  }
}

TEST(TorchPickle, LegacyFormatGivesTheSameTensorsAsZip) {
  const StateDict zip = load_torch_state_dict(kFixtures / "tiny_wide.pth");
  const StateDict legacy = load_torch_state_dict(kFixtures / "tiny_wide_legacy.pth");
  ASSERT_EQ(zip.size(), legacy.size());
  for (const auto& [name, t] : zip) {
    ASSERT_TRUE(legacy.count(name)) << name;
    EXPECT_EQ(legacy.at(name).shape, t.shape) << name;
    EXPECT_EQ(legacy.at(name).data, t.data) << name;
  }
}

TEST(TorchPickle, StridesOffsetsHalfAndDoubleStorages) {
  // Half storage of 6: 1, -2, 0.5, 3, 65504 (largest half), 2^-24 (smallest subnormal).
  const uint16_t halves[6] = {0x3C00, 0xC000, 0x3800, 0x4200, 0x7BFF, 0x0001};
  const std::string half(reinterpret_cast<const char*>(halves), sizeof(halves));
  const double doubles[3] = {1.5, -2.25, 1e10};
  const std::string dbl(reinterpret_cast<const char*>(doubles), sizeof(doubles));
  Pickle p;
  p.begin_dict();
  p.tensor("transposed", "HalfStorage", "0", 6, 0, {2, 3}, {1, 2});  // element (i,j) = s[i+2j]
  p.tensor("slice", "FloatStorage", "1", 5, 2, {2}, {2});            // s[2], s[4]
  p.tensor("double", "DoubleStorage", "2", 3, 1, {2}, {1});
  p.tensor("scalar", "FloatStorage", "1", 5, 3, {}, {});
  const std::string z =
      torch_zip(p.end_dict(), {{"0", half}, {"1", f32_bytes({10, 11, 12, 13, 14})}, {"2", dbl}});
  const StateDict sd = parse_torch_state_dict(z, "hand.pth");
  ASSERT_EQ(sd.size(), 4u);
  EXPECT_EQ(sd.at("transposed").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(sd.at("transposed").data,
            (std::vector<float>{1.0f, 0.5f, 65504.0f, -2.0f, 3.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(sd.at("slice").data, (std::vector<float>{12, 14}));
  EXPECT_EQ(sd.at("double").data, (std::vector<float>{-2.25f, 1e10f}));
  EXPECT_EQ(sd.at("scalar").data, std::vector<float>{13});
}

TEST(TorchPickle, TensorOutsideItsStorageIsRejected) {
  Pickle p;
  p.begin_dict();
  p.tensor("w", "FloatStorage", "0", 4, 1, {2, 2}, {2, 1});  // needs s[1..4], storage has 4
  const std::string msg = error_of(torch_zip(p.end_dict(), {{"0", f32_bytes({1, 2, 3, 4})}}));
  EXPECT_NE(msg.find("past its storage"), std::string::npos) << msg;

  Pickle q;  // storage entry shorter than the pickle says
  q.begin_dict();
  q.tensor("w", "FloatStorage", "0", 4, 0, {4}, {1});
  const std::string msg2 = error_of(torch_zip(q.end_dict(), {{"0", f32_bytes({1, 2, 3})}}));
  EXPECT_NE(msg2.find("storage '0'"), std::string::npos) << msg2;

  Pickle r;  // storage entry missing
  r.begin_dict();
  r.tensor("w", "FloatStorage", "9", 1, 0, {1}, {1});
  const std::string msg3 = error_of(torch_zip(r.end_dict(), {}));
  EXPECT_NE(msg3.find("missing"), std::string::npos) << msg3;
}

TEST(TorchPickle, MaliciousPicklesAreRejectedByName) {
  struct Case {
    std::string pickle, expect;
  };
  const std::string proto("\x80\x02", 2);
  const std::string ls = Pickle().str("ls").b.substr(2);  // BINUNICODE 'ls'
  const std::vector<Case> cases = {
      {proto + "cos\nsystem\n" + ls + "\x85R.", "os.system"},
      {proto + "cposix\nsystem\n" + ls + "\x85R.", "posix.system"},
      {proto + "cbuiltins\neval\n" + ls + "\x85R.", "builtins.eval"},
      {proto + "c__builtin__\nexec\n" + ls + "\x85R.", "__builtin__.exec"},
      {std::string("\x80\x04\x8c\x02os\x8c\x06system\x93.", 15), "os.system"},  // STACK_GLOBAL
      {proto + "(" + ls + "ios\nsystem\n.", "INST"},
      {proto + "ccollections\nOrderedDict\n)\x81.", "NEWOBJ"},
      {proto + "(ccollections\nOrderedDict\no.", "OBJ"},
      {proto + "\xff.", "0xff"},
      {proto + "ctorch\nFloatStorage\n)R.", "not an allowed callable"},
      {proto + "ctorch._utils\n_rebuild_tensor_v2\n)R.", "_rebuild_tensor_v2 arguments"},
  };
  for (const Case& c : cases) {
    for (const bool zipped : {true, false}) {
      const std::string bytes = zipped ? torch_zip(c.pickle, {}) : c.pickle;
      const std::string msg = error_of(bytes);
      EXPECT_NE(msg.find(c.expect), std::string::npos)
          << "expected '" << c.expect << "' in: " << msg;
      EXPECT_NE(msg.find("evil.pth"), std::string::npos) << msg;
    }
  }
  // Well-formed pickles of the wrong structure.
  EXPECT_NE(error_of(torch_zip(proto + "N.", {})).find("does not hold a dict"), std::string::npos);
  const std::string one = proto + "}" + Pickle().str("a").b.substr(2) + "K\x01s.";
  EXPECT_NE(error_of(torch_zip(one, {})).find("'a' is not a tensor"), std::string::npos);
}

TEST(TorchPickle, CompressedOrForeignFilesAreRejected) {
  std::string z = torch_zip(Pickle().begin_dict().end_dict(), {});
  EXPECT_EQ(parse_torch_state_dict(z, "empty.pth").size(), 0u);
  z[8] = 8;  // local header says deflate: the central directory still says stored
  std::string zc = torch_zip(Pickle().begin_dict().end_dict(), {});
  const size_t cd = zc.find(std::string("PK\x01\x02", 4));
  zc[cd + 10] = 8;  // central directory: deflate
  EXPECT_NE(error_of(zc).find("compressed"), std::string::npos);
  EXPECT_NE(error_of(make_zip({{"x.txt", "hi"}})).find("no data.pkl"), std::string::npos);
  EXPECT_NE(error_of("GIF89a").find("not a PyTorch"), std::string::npos);
  EXPECT_NE(error_of("").find("not a PyTorch"), std::string::npos);
}

TEST(TorchPickle, ModulePrefixAndCheckpointWrapperAreUnwrapped) {
  Pickle p;
  p.b += "}";  // {"state_dict": {"module.w": tensor}}
  p.str("state_dict");
  p.begin_dict();
  p.tensor("module.w", "FloatStorage", "0", 1, 0, {1}, {1});
  p.b += "us.";
  const StateDict sd = parse_torch_state_dict(torch_zip(p.b, {{"0", f32_bytes({5})}}), "ck.pth");
  ASSERT_EQ(sd.size(), 1u);
  EXPECT_EQ(sd.at("w").data, std::vector<float>{5});
}

// Any outcome but a crash or a foreign exception: a bad_input Error or a parsed dict.
void expect_clean(const std::string& bytes, const std::string& what) {
  try {
    parse_torch_state_dict(bytes, "fuzz.pth");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input) << what << ": " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": unexpected exception " << e.what();
  }
}

TEST(TorchPickle, TruncatedFilesAlwaysFailCleanly) {
  for (const char* name : {"tiny_basic.pth", "tiny_wide_legacy.pth"}) {
    const std::string good = testing::read_bytes(kFixtures / name);
    std::mt19937 rng(7);
    std::vector<size_t> cuts;
    for (size_t n = 0; n < 600 && n < good.size(); ++n) cuts.push_back(n);  // head
    for (size_t n = good.size() - std::min<size_t>(600, good.size()); n < good.size(); ++n)
      cuts.push_back(n);  // tail
    for (int i = 0; i < 300; ++i) cuts.push_back(rng() % good.size());
    for (size_t n : cuts) {
      try {
        parse_torch_state_dict(std::string_view(good).substr(0, n), "cut.pth");
        ADD_FAILURE() << name << " truncated to " << n << " bytes was accepted";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::bad_input);
      }
    }
  }
}

TEST(TorchPickle, BitFlipsNeverCrash) {
  std::mt19937 rng(11);
  // Whole files: zip (CRC-protected entries, so mostly clean errors) and legacy (unprotected).
  for (const char* name : {"tiny_basic.pth", "tiny_wide_legacy.pth"}) {
    const std::string good = testing::read_bytes(kFixtures / name);
    const size_t pickle_end = std::min<size_t>(good.size(), 12000);
    for (int i = 0; i < 300; ++i) {
      std::string bad = good;
      // Half of the flips in the first bytes, where the pickle lives in both formats.
      const size_t at = (i % 2 == 0) ? rng() % pickle_end : rng() % good.size();
      bad[at] = static_cast<char>(bad[at] ^ (1 << (rng() % 8)));
      if (i % 5 == 0) bad[rng() % bad.size()] ^= static_cast<char>(1 << (rng() % 8));
      expect_clean(bad, std::string(name) + " flip at " + std::to_string(at));
    }
  }
  // The zip's pickle with bit flips, re-packed with a valid CRC so that the unpickler sees them.
  const std::string good = testing::read_bytes(kFixtures / "tiny_basic.pth");
  const std::vector<ZipEntry> entries = read_stored_zip(good, "tiny_basic.pth");
  std::vector<std::pair<std::string, std::string>> files;
  size_t pickle_index = 0;
  for (const ZipEntry& e : entries) {
    if (e.name.size() >= 8 && e.name.substr(e.name.size() - 8) == "data.pkl") {
      pickle_index = files.size();
    }
    files.emplace_back(e.name, std::string(e.data));
  }
  const std::string pickle = files[pickle_index].second;
  for (int i = 0; i < 800; ++i) {
    std::string bad = pickle;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) bad[rng() % bad.size()] ^= static_cast<char>(1 << (rng() % 8));
    if (i % 10 == 0) bad.resize(rng() % bad.size());
    files[pickle_index].second = bad;
    expect_clean(make_zip(files), "pickle mutation " + std::to_string(i));
  }
}

}  // namespace
}  // namespace patchcore
