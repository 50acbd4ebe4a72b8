#include "torch_pickle.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "error.h"
#include "file_io.h"

namespace patchcore {

namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little,
              "storages are converted assuming a little-endian host");

namespace {

uint16_t le16(const char* p) {
  return static_cast<uint16_t>(static_cast<uint8_t>(p[0]) | static_cast<uint8_t>(p[1]) << 8);
}
uint32_t le32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t le64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

std::string hex_byte(uint8_t b) {
  static const char* hex = "0123456789abcdef";
  return std::string("0x") + hex[b >> 4] + hex[b & 15];
}

// ---------------------------------------------------------------------------------------------
// Zip.

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50,
                   kEnd64Sig = 0x06064b50, kLocator64Sig = 0x07064b50;

}  // namespace

uint32_t crc32(std::string_view bytes) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (char ch : bytes) c = table[(c ^ static_cast<uint8_t>(ch)) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::vector<ZipEntry> read_stored_zip(std::string_view z, const std::string& where) {
  const uint64_t size = z.size();
  auto fail = [&](const std::string& what) -> void {
    throw_bad_input(where, what + " (truncated or corrupted zip archive?)");
  };
  if (size < 22) fail("too short for a zip archive");
  // The end record sits within the last 22 + 65535 bytes (its comment is at most 65535 long).
  uint64_t end = 0;
  bool found = false;
  for (uint64_t pos = size - 22;; --pos) {
    if (le32(z.data() + pos) == kEndSig && pos + 22 + le16(z.data() + pos + 20) == size) {
      end = pos;
      found = true;
      break;
    }
    if (pos == 0 || size - pos > 22 + 65535) break;
  }
  if (!found) fail("no zip end-of-central-directory record");
  uint64_t n_entries = le16(z.data() + end + 10);
  uint64_t cd_size = le32(z.data() + end + 12);
  uint64_t cd_offset = le32(z.data() + end + 16);
  if (n_entries == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_offset == 0xFFFFFFFFu ||
      (end >= 20 && le32(z.data() + end - 20) == kLocator64Sig)) {
    if (end < 20 || le32(z.data() + end - 20) != kLocator64Sig) fail("zip64 locator missing");
    const uint64_t rec = le64(z.data() + end - 20 + 8);
    if (rec > size || size - rec < 56 || le32(z.data() + rec) != kEnd64Sig) {
      fail("bad zip64 end-of-central-directory record");
    }
    n_entries = le64(z.data() + rec + 32);
    cd_size = le64(z.data() + rec + 40);
    cd_offset = le64(z.data() + rec + 48);
  }
  if (cd_offset > size || cd_size > size - cd_offset) fail("central directory out of bounds");
  // Each central entry takes at least 46 bytes, which bounds the count before reserving.
  if (n_entries > cd_size / 46) fail("central directory entry count inconsistent with its size");

  std::vector<ZipEntry> entries;
  entries.reserve(n_entries);
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < n_entries; ++i) {
    if (cd_end - pos < 46 || le32(z.data() + pos) != kCentralSig) {
      fail("bad central directory entry " + std::to_string(i));
    }
    const char* e = z.data() + pos;
    const uint16_t flags = le16(e + 8);
    const uint16_t method = le16(e + 10);
    const uint32_t crc = le32(e + 16);
    uint64_t csize = le32(e + 20), usize = le32(e + 24);
    const uint64_t name_len = le16(e + 28), extra_len = le16(e + 30), comment_len = le16(e + 32);
    uint64_t local = le32(e + 42);
    if (cd_end - pos - 46 < name_len + extra_len + comment_len) fail("central entry overruns");
    std::string name(e + 46, name_len);
    // Zip64 extra field: the 64-bit values of the fields that hold 0xFFFFFFFF, in this order.
    std::string_view extra(e + 46 + name_len, extra_len);
    while (extra.size() >= 4) {
      const uint16_t id = le16(extra.data()), len = le16(extra.data() + 2);
      if (extra.size() - 4 < len) fail("bad extra field in entry '" + name + "'");
      if (id == 1) {
        std::string_view f = extra.substr(4, len);
        for (uint64_t* v : {&usize, &csize, &local}) {
          if (*v != 0xFFFFFFFFu) continue;
          if (f.size() < 8) fail("short zip64 extra field in entry '" + name + "'");
          *v = le64(f.data());
          f.remove_prefix(8);
        }
      }
      extra.remove_prefix(4 + static_cast<size_t>(len));
    }
    if (flags & 1) throw_bad_input(where, "zip entry '" + name + "' is encrypted");
    if (method != 0) {
      throw_bad_input(where, "zip entry '" + name + "' is compressed (method " +
                                 std::to_string(method) +
                                 "); torch.save writes uncompressed entries, so this file was "
                                 "re-packed: extract and re-zip it with 'zip -0'");
    }
    if (csize != usize) fail("stored entry '" + name + "' has different packed and real sizes");
    if (local > size || size - local < 30 || le32(z.data() + local) != kLocalSig) {
      fail("bad local header for entry '" + name + "'");
    }
    const uint64_t data_at = local + 30 + le16(z.data() + local + 26) + le16(z.data() + local + 28);
    if (data_at > size || size - data_at < usize)
      fail("data of entry '" + name + "' out of bounds");
    ZipEntry entry{std::move(name), z.substr(data_at, usize)};
    if (crc32(entry.data) != crc) {
      throw_bad_input(where, "zip entry '" + entry.name + "' fails its CRC check (corrupted file)");
    }
    entries.push_back(std::move(entry));
    pos += 46 + name_len + extra_len + comment_len;
  }
  return entries;
}

namespace {

// ---------------------------------------------------------------------------------------------
// The restricted unpickler. Values live in an arena and refer to each other by index, so shared
// or even cyclic references made through the memo cost nothing and can never dangle.

enum class DType { f32, f64, f16, bf16, i64, i32, i16, i8, u8, b8 };

int element_size(DType t) {
  switch (t) {
    case DType::f64:
    case DType::i64:
      return 8;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::f16:
    case DType::bf16:
    case DType::i16:
      return 2;
    default:
      return 1;
  }
}

std::optional<DType> storage_type(const std::string& name) {
  static const std::map<std::string, DType> types = {
      {"FloatStorage", DType::f32},     {"DoubleStorage", DType::f64}, {"HalfStorage", DType::f16},
      {"BFloat16Storage", DType::bf16}, {"LongStorage", DType::i64},   {"IntStorage", DType::i32},
      {"ShortStorage", DType::i16},     {"CharStorage", DType::i8},    {"ByteStorage", DType::u8},
      {"BoolStorage", DType::b8}};
  auto it = types.find(name);
  if (it == types.end()) return std::nullopt;
  return it->second;
}

enum class Kind {
  none,
  boolean,
  integer,
  big_integer,
  floating,
  string,
  tuple,
  list,
  dict,
  // allow-listed globals
  ordered_dict_type,
  rebuild_tensor,
  rebuild_parameter,
  storage_type,
  // results of persistent ids and rebuilds
  storage,
  tensor
};

struct Value {
  explicit Value(Kind k = Kind::none) : kind(k) {}
  Kind kind;
  int64_t i = 0;  // integer, boolean; storage element count; tensor: index into tensors
  double f = 0;
  std::string s;  // string; big integer bytes; storage key
  DType dtype = DType::f32;
  std::vector<int> items;  // tuple, list; dict as key, value, key, value, ...
};

struct TensorRef {
  std::string key;  // storage key
  DType dtype = DType::f32;
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
};

class Unpickler {
 public:
  Unpickler(std::string_view bytes, const std::string& where) : b_(bytes), where_(where) {}

  /// Runs one pickle starting at `pos`; returns the index of its result and leaves pos after
  /// its STOP.
  int run(size_t& pos);

  const Value& at(int index) const { return values_.at(static_cast<size_t>(index)); }
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  [[noreturn]] void fail(const std::string& what) const {
    throw_bad_input(where_, "pickle: " + what + " at byte " + std::to_string(op_at_));
  }

 private:
  int make(Value v) {
    // Bounded by the input: every opcode adds at most one value.
    values_.push_back(std::move(v));
    return static_cast<int>(values_.size() - 1);
  }
  Value& val(int index) { return values_[static_cast<size_t>(index)]; }
  int pop() {
    if (stack_.size() <= stack_floor()) fail("stack underflow");
    const int v = stack_.back();
    stack_.pop_back();
    return v;
  }
  int top() {
    if (stack_.size() <= stack_floor()) fail("stack underflow");
    return stack_.back();
  }
  size_t stack_floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<int> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<int> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  const char* take(size_t n) {
    if (b_.size() - pos_ < n) fail("unexpected end of data (truncated file?)");
    const char* p = b_.data() + pos_;
    pos_ += n;
    return p;
  }
  std::string line() {
    const size_t nl = b_.find('\n', pos_);
    if (nl == std::string_view::npos || nl - pos_ > 256) fail("unterminated GLOBAL name");
    std::string s(b_.substr(pos_, nl - pos_));
    pos_ = nl + 1;
    return s;
  }
  void memo_put(uint32_t index) { memo_[index] = top(); }
  int memo_get(uint32_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo entry " + std::to_string(index) + " was never stored");
    return it->second;
  }
  int global(const std::string& module, const std::string& name);
  int reduce(int callable, int args);
  int persistent_load(int pid);
  void set_items(int dict, const std::vector<int>& kv);
  std::vector<int64_t> int_tuple(int index, const char* what);

  std::string_view b_;
  std::string where_;
  size_t pos_ = 0;
  size_t op_at_ = 0;
  std::vector<Value> values_;
  std::vector<int> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, int> memo_;
  std::vector<TensorRef> tensors_;
};

int Unpickler::global(const std::string& module, const std::string& name) {
  Value v;
  if (module == "collections" && name == "OrderedDict") {
    v.kind = Kind::ordered_dict_type;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    v.kind = Kind::rebuild_tensor;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    v.kind = Kind::rebuild_parameter;
  } else if (module == "torch" && storage_type(name)) {
    v.kind = Kind::storage_type;
    v.dtype = *storage_type(name);
  } else {
    fail("refuses to load global '" + module + "." + name +
         "': only the types of a tensor state_dict are allowed (the file may be malicious, or "
         "hold more than weights)");
  }
  return make(std::move(v));
}

std::vector<int64_t> Unpickler::int_tuple(int index, const char* what) {
  const Value& t = val(index);
  if (t.kind != Kind::tuple) fail(std::string(what) + " is not a tuple");
  std::vector<int64_t> out;
  for (int i : t.items) {
    if (val(i).kind != Kind::integer) fail(std::string(what) + " holds a non-integer");
    out.push_back(val(i).i);
  }
  return out;
}

// ('storage', torch.<T>Storage, key, location, numel[, view_metadata])
int Unpickler::persistent_load(int pid) {
  const Value& t = val(pid);
  if (t.kind != Kind::tuple || t.items.size() < 5 || t.items.size() > 6) {
    fail("persistent id is not a storage tuple");
  }
  const Value& tag = val(t.items[0]);
  const Value& type = val(t.items[1]);
  const Value& key = val(t.items[2]);
  const Value& numel = val(t.items[4]);
  if (tag.kind != Kind::string || tag.s != "storage") fail("persistent id is not a storage");
  if (type.kind != Kind::storage_type) fail("storage of an unknown type");
  if (key.kind != Kind::string) fail("storage key is not a string");
  if (numel.kind != Kind::integer || numel.i < 0) fail("storage size is not a count");
  if (t.items.size() == 6 && val(t.items[5]).kind != Kind::none) {
    fail("storage views (torch < 0.4 files) are not supported");
  }
  Value s;
  s.kind = Kind::storage;
  s.dtype = type.dtype;
  s.s = key.s;
  s.i = numel.i;
  return make(std::move(s));
}

int Unpickler::reduce(int callable, int args) {
  const Kind kind = val(callable).kind;
  if (val(args).kind != Kind::tuple) fail("REDUCE arguments are not a tuple");
  const std::vector<int> a = val(args).items;
  if (kind == Kind::ordered_dict_type) {
    if (!a.empty()) fail("OrderedDict called with arguments");
    Value d;
    d.kind = Kind::dict;
    return make(std::move(d));
  }
  if (kind == Kind::rebuild_parameter) {
    // (data, requires_grad, backward_hooks)
    if (a.size() != 3 || val(a[0]).kind != Kind::tensor) fail("bad _rebuild_parameter arguments");
    return a[0];
  }
  if (kind == Kind::rebuild_tensor) {
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    if (a.size() < 6 || a.size() > 7) fail("bad _rebuild_tensor_v2 arguments");
    const Value& storage = val(a[0]);
    if (storage.kind != Kind::storage) fail("tensor without a storage");
    if (val(a[1]).kind != Kind::integer || val(a[1]).i < 0) fail("bad tensor storage offset");
    TensorRef ref;
    ref.key = storage.s;
    ref.dtype = storage.dtype;
    ref.storage_numel = storage.i;
    ref.offset = val(a[1]).i;
    ref.sizes = int_tuple(a[2], "tensor size");
    ref.strides = int_tuple(a[3], "tensor stride");
    if (ref.sizes.size() != ref.strides.size()) fail("tensor size and stride differ in length");
    // Every element must lie inside the storage.
    int64_t numel = 1, last = ref.offset;
    for (size_t d = 0; d < ref.sizes.size(); ++d) {
      if (ref.sizes[d] < 0 || ref.strides[d] < 0 || ref.sizes[d] > (int64_t{1} << 40) ||
          ref.strides[d] > (int64_t{1} << 40)) {
        fail("bad tensor size or stride");
      }
      if (ref.sizes[d] != 0 && numel > (int64_t{1} << 40) / ref.sizes[d]) fail("tensor too large");
      numel *= ref.sizes[d];
      if (ref.sizes[d] > 0) last += (ref.sizes[d] - 1) * ref.strides[d];
      if (last > (int64_t{1} << 50)) fail("tensor too large");
    }
    if (numel > 0 && last >= ref.storage_numel) fail("tensor extends past its storage");
    tensors_.push_back(std::move(ref));
    Value t;
    t.kind = Kind::tensor;
    t.i = static_cast<int64_t>(tensors_.size() - 1);
    return make(std::move(t));
  }
  fail("REDUCE on something that is not an allowed callable");
}

void Unpickler::set_items(int dict, const std::vector<int>& kv) {
  if (val(dict).kind != Kind::dict) fail("SETITEM on something that is not a dict");
  if (kv.size() % 2 != 0) fail("SETITEMS with an odd number of items");
  for (int i : kv) val(dict).items.push_back(i);
}

int Unpickler::run(size_t& pos) {
  pos_ = pos;
  stack_.clear();
  marks_.clear();
  memo_.clear();
  while (true) {
    op_at_ = pos_;
    const uint8_t op = static_cast<uint8_t>(*take(1));
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t proto = static_cast<uint8_t>(*take(1));
        if (proto < 2 || proto > 5) fail("unsupported pickle protocol " + std::to_string(proto));
        break;
      }
      case 0x95:  // FRAME (protocol 4): a length hint only
        take(8);
        break;
      case '(':  // MARK
        marks_.push_back(stack_.size());
        break;
      case '.': {  // STOP
        const int result = pop();
        if (!marks_.empty()) fail("STOP inside a MARK");
        pos = pos_;
        return result;
      }
      case '}':  // EMPTY_DICT
        stack_.push_back(make(Value{Kind::dict}));
        break;
      case ']':  // EMPTY_LIST
        stack_.push_back(make(Value{Kind::list}));
        break;
      case ')':  // EMPTY_TUPLE
        stack_.push_back(make(Value{Kind::tuple}));
        break;
      case 'N':  // NONE
        stack_.push_back(make(Value{Kind::none}));
        break;
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        Value v{Kind::boolean};
        v.i = op == 0x88;
        stack_.push_back(make(std::move(v)));
        break;
      }
      case 'J': {  // BININT
        Value v{Kind::integer};
        v.i = static_cast<int32_t>(le32(take(4)));
        stack_.push_back(make(std::move(v)));
        break;
      }
      case 'K': {  // BININT1
        Value v{Kind::integer};
        v.i = static_cast<uint8_t>(*take(1));
        stack_.push_back(make(std::move(v)));
        break;
      }
      case 'M': {  // BININT2
        Value v{Kind::integer};
        v.i = le16(take(2));
        stack_.push_back(make(std::move(v)));
        break;
      }
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        const size_t n = static_cast<uint8_t>(*take(1));
        const char* p = take(n);
        Value v;
        if (n <= 8) {
          v.kind = Kind::integer;
          uint64_t u = 0;
          for (size_t k = n; k-- > 0;) u = u << 8 | static_cast<uint8_t>(p[k]);
          if (n > 0 && n < 8 && (static_cast<uint8_t>(p[n - 1]) & 0x80))
            u |= ~uint64_t{0} << (8 * n);
          v.i = static_cast<int64_t>(u);
        } else {
          v.kind = Kind::big_integer;  // e.g. the legacy format's magic number
          v.s.assign(p, n);
        }
        stack_.push_back(make(std::move(v)));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian double
        const char* p = take(8);
        uint64_t u = 0;
        for (int k = 0; k < 8; ++k) u = u << 8 | static_cast<uint8_t>(p[k]);
        Value v{Kind::floating};
        v.f = std::bit_cast<double>(u);
        stack_.push_back(make(std::move(v)));
        break;
      }
      case 'X':     // BINUNICODE
      case 0x8c: {  // SHORT_BINUNICODE
        const size_t n = op == 'X' ? le32(take(4)) : static_cast<uint8_t>(*take(1));
        Value v{Kind::string};
        v.s.assign(take(n), n);
        stack_.push_back(make(std::move(v)));
        break;
      }
      case 't':     // TUPLE
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        Value v{Kind::tuple};
        if (op == 't') {
          v.items = pop_mark();
        } else {
          v.items.resize(static_cast<size_t>(op - 0x84));
          for (size_t k = v.items.size(); k-- > 0;) v.items[k] = pop();
        }
        stack_.push_back(make(std::move(v)));
        break;
      }
      case 'c': {  // GLOBAL
        const std::string module = line();
        const std::string name = line();
        stack_.push_back(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        const int name = pop();
        const int module = pop();
        if (val(module).kind != Kind::string || val(name).kind != Kind::string) {
          fail("STACK_GLOBAL without two strings");
        }
        stack_.push_back(global(val(module).s, val(name).s));
        break;
      }
      case 'Q':  // BINPERSID
        stack_.push_back(persistent_load(pop()));
        break;
      case 'R': {  // REDUCE
        const int args = pop();
        const int callable = pop();
        stack_.push_back(reduce(callable, args));
        break;
      }
      case 's': {  // SETITEM
        const int value = pop();
        const int key = pop();
        set_items(top(), {key, value});
        break;
      }
      case 'u': {  // SETITEMS
        const std::vector<int> kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case 'a': {  // APPEND
        const int item = pop();
        if (val(top()).kind != Kind::list) fail("APPEND to something that is not a list");
        val(top()).items.push_back(item);
        break;
      }
      case 'e': {  // APPENDS
        const std::vector<int> items = pop_mark();
        if (val(top()).kind != Kind::list) fail("APPENDS to something that is not a list");
        for (int i : items) val(top()).items.push_back(i);
        break;
      }
      case 'b': {  // BUILD: only an OrderedDict's state (its _metadata), which is ignored
        const int state = pop();
        if (val(top()).kind != Kind::dict) fail("BUILD on something that is not a dict");
        const Kind sk = val(state).kind;
        if (sk != Kind::dict && sk != Kind::none && sk != Kind::tuple) fail("BUILD with odd state");
        break;
      }
      case 'q':  // BINPUT
        memo_put(static_cast<uint8_t>(*take(1)));
        break;
      case 'r':  // LONG_BINPUT
        memo_put(le32(take(4)));
        break;
      case 0x94:  // MEMOIZE
        memo_put(static_cast<uint32_t>(memo_.size()));
        break;
      case 'h':  // BINGET
        stack_.push_back(memo_get(static_cast<uint8_t>(*take(1))));
        break;
      case 'j':  // LONG_BINGET
        stack_.push_back(memo_get(le32(take(4))));
        break;
      default: {
        static const std::map<uint8_t, const char*> names = {
            {'i', "INST"},        {'o', "OBJ"},          {0x81, "NEWOBJ"},
            {0x92, "NEWOBJ_EX"},  {'c', "GLOBAL"},       {'V', "UNICODE"},
            {'S', "STRING"},      {'I', "INT"},          {'L', "LONG"},
            {'F', "FLOAT"},       {'P', "PERSID"},       {'p', "PUT"},
            {'g', "GET"},         {'B', "BINBYTES"},     {'C', "SHORT_BINBYTES"},
            {0x8b, "LONG4"},      {0x82, "EXT1"},        {0x83, "EXT2"},
            {0x84, "EXT4"},       {'0', "POP"},          {'1', "POP_MARK"},
            {'2', "DUP"},         {'d', "DICT"},         {'l', "LIST"},
            {0x8f, "EMPTY_SET"},  {0x90, "ADDITEMS"},    {0x91, "FROZENSET"},
            {0x96, "BYTEARRAY8"}, {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"}};
        auto it = names.find(op);
        fail("refuses opcode " + hex_byte(op) +
             (it != names.end() ? std::string(" (") + it->second + ")" : std::string()) +
             ": not part of a tensor state_dict");
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Storages to float tensors.

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    exp = 113;
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
  }
  return std::bit_cast<float>(bits);
}

float element(const char* p, DType t, bool swap) {
  char buf[8];
  const int n = element_size(t);
  if (swap) {
    for (int k = 0; k < n; ++k) buf[k] = p[n - 1 - k];
    p = buf;
  }
  switch (t) {
    case DType::f32: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case DType::f64: {
      double v;
      std::memcpy(&v, p, 8);
      return static_cast<float>(v);
    }
    case DType::f16:
      return half_to_float(le16(p));
    case DType::bf16:
      return std::bit_cast<float>(static_cast<uint32_t>(le16(p)) << 16);
    case DType::i64:
      return static_cast<float>(static_cast<int64_t>(le64(p)));
    case DType::i32:
      return static_cast<float>(static_cast<int32_t>(le32(p)));
    case DType::i16:
      return static_cast<float>(static_cast<int16_t>(le16(p)));
    case DType::i8:
      return static_cast<float>(static_cast<int8_t>(*p));
    case DType::u8:
      return static_cast<float>(static_cast<uint8_t>(*p));
    case DType::b8:
      return *p != 0 ? 1.0f : 0.0f;
  }
  return 0.0f;
}

Tensor materialise(const TensorRef& r, std::string_view storage, bool swap,
                   const std::string& where, const std::string& name) {
  const int es = element_size(r.dtype);
  if (storage.size() / es != static_cast<uint64_t>(r.storage_numel) || storage.size() % es != 0) {
    throw_bad_input(where, "tensor '" + name + "': storage '" + r.key + "' holds " +
                               std::to_string(storage.size()) + " bytes, expected " +
                               std::to_string(r.storage_numel) + " elements of " +
                               std::to_string(es) + " bytes");
  }
  Tensor t(r.sizes);
  const size_t dims = r.sizes.size();
  bool contiguous = true;
  for (int64_t d = static_cast<int64_t>(dims) - 1, step = 1; d >= 0; --d) {
    if (r.sizes[d] != 1 && r.strides[d] != step) contiguous = false;
    step *= r.sizes[d];
  }
  if (contiguous && r.dtype == DType::f32 && !swap) {  // the usual case, ~all of the bytes
    std::memcpy(t.data.data(), storage.data() + r.offset * es, t.data.size() * sizeof(float));
    return t;
  }
  std::vector<int64_t> index(dims, 0);
  int64_t src = r.offset;
  for (int64_t k = 0; k < t.numel(); ++k) {
    t.data[static_cast<size_t>(k)] = element(storage.data() + src * es, r.dtype, swap);
    // Advance the multi-index, last dimension fastest.
    for (size_t d = dims; d-- > 0;) {
      src += r.strides[d];
      if (++index[d] < r.sizes[d]) break;
      src -= r.strides[d] * r.sizes[d];
      index[d] = 0;
    }
  }
  return t;
}

const Value* dict_lookup(const Unpickler& u, const Value& dict, const std::string& key) {
  for (size_t k = 0; k + 1 < dict.items.size(); k += 2) {
    const Value& kv = u.at(dict.items[k]);
    if (kv.kind == Kind::string && kv.s == key) return &u.at(dict.items[k + 1]);
  }
  return nullptr;
}

// The dict of tensors inside the unpickled object, by key -> tensor index.
std::vector<std::pair<std::string, int64_t>> tensor_entries(const Unpickler& u, int root,
                                                            const std::string& where) {
  const Value* dict = &u.at(root);
  if (dict->kind != Kind::dict) throw_bad_input(where, "the pickle does not hold a dict");
  for (const char* wrapper : {"state_dict", "model"}) {
    const Value* inner = dict_lookup(u, *dict, wrapper);
    if (inner != nullptr && inner->kind == Kind::dict) {
      dict = inner;
      break;
    }
  }
  std::vector<std::pair<std::string, int64_t>> out;
  for (size_t k = 0; k + 1 < dict->items.size(); k += 2) {
    const Value& key = u.at(dict->items[k]);
    const Value& value = u.at(dict->items[k + 1]);
    if (key.kind != Kind::string) throw_bad_input(where, "state_dict key is not a string");
    if (value.kind != Kind::tensor) {
      throw_bad_input(where, "state_dict entry '" + key.s + "' is not a tensor");
    }
    out.emplace_back(key.s, value.i);
  }
  return out;
}

StateDict collect(const Unpickler& u, int root, const std::map<std::string, std::string_view>& data,
                  bool swap, const std::string& where) {
  StateDict out;
  const auto entries = tensor_entries(u, root, where);
  bool all_module = !entries.empty();
  for (const auto& [name, index] : entries)
    all_module = all_module && name.rfind("module.", 0) == 0;
  for (const auto& [name, index] : entries) {
    const TensorRef& r = u.tensors().at(static_cast<size_t>(index));
    auto it = data.find(r.key);
    if (it == data.end()) {
      throw_bad_input(where, "tensor '" + name + "': storage '" + r.key + "' is missing");
    }
    const std::string key = all_module ? name.substr(7) : name;
    if (!out.emplace(key, materialise(r, it->second, swap, where, name)).second) {
      throw_bad_input(where, "tensor '" + key + "' appears twice");
    }
  }
  return out;
}

StateDict parse_zip(std::string_view bytes, const std::string& where) {
  const std::vector<ZipEntry> entries = read_stored_zip(bytes, where);
  const ZipEntry* pickle = nullptr;
  for (const ZipEntry& e : entries) {
    if (e.name == "data.pkl" ||
        (e.name.size() > 9 && e.name.compare(e.name.size() - 9, 9, "/data.pkl") == 0)) {
      if (pickle != nullptr) throw_bad_input(where, "the archive holds two data.pkl entries");
      pickle = &e;
    }
  }
  if (pickle == nullptr) throw_bad_input(where, "not a torch.save archive (no data.pkl)");
  const std::string prefix = pickle->name.substr(0, pickle->name.size() - 8);  // keeps the '/'
  std::map<std::string, std::string_view> storages;
  bool swap = false;
  for (const ZipEntry& e : entries) {
    if (e.name.rfind(prefix + "data/", 0) == 0) {
      storages.emplace(e.name.substr(prefix.size() + 5), e.data);
    } else if (e.name == prefix + "byteorder") {
      if (e.data == "big") {
        swap = true;
      } else if (e.data != "little") {
        throw_bad_input(where, "unknown byteorder '" + std::string(e.data.substr(0, 16)) + "'");
      }
    }
  }
  Unpickler u(pickle->data, where + " (" + pickle->name + ")");
  size_t pos = 0;
  const int root = u.run(pos);
  return collect(u, root, storages, swap, where);
}

StateDict parse_legacy(std::string_view bytes, const std::string& where) {
  Unpickler u(bytes, where);
  size_t pos = 0;
  const Value& magic = u.at(u.run(pos));
  static const std::string kMagic("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
  if (magic.kind != Kind::big_integer || magic.s != kMagic) {
    throw_bad_input(where, "not a PyTorch file (neither a zip archive nor the legacy format)");
  }
  const Value& protocol = u.at(u.run(pos));
  if (protocol.kind != Kind::integer || protocol.i != 1001) {
    throw_bad_input(where, "unsupported legacy PyTorch protocol version");
  }
  const Value& sys_info = u.at(u.run(pos));
  if (sys_info.kind != Kind::dict) throw_bad_input(where, "legacy sys_info is not a dict");
  bool swap = false;
  if (const Value* le = dict_lookup(u, sys_info, "little_endian")) {
    swap = le->kind == Kind::boolean && le->i == 0;
  }
  const int root = u.run(pos);
  const Value& keys = u.at(u.run(pos));
  if (keys.kind != Kind::list) throw_bad_input(where, "legacy storage key list missing");
  // Element size per storage key, from the tensors that use it.
  std::map<std::string, int> elem;
  for (const TensorRef& r : u.tensors()) elem[r.key] = element_size(r.dtype);
  std::map<std::string, std::string_view> storages;
  for (int k : keys.items) {
    const Value& key = u.at(k);
    if (key.kind != Kind::string) throw_bad_input(where, "legacy storage key is not a string");
    if (bytes.size() - pos < 8) throw_bad_input(where, "truncated before storage '" + key.s + "'");
    uint64_t numel = le64(bytes.data() + pos);
    if (swap) numel = __builtin_bswap64(numel);
    pos += 8;
    auto it = elem.find(key.s);
    // A storage no tensor uses still has to be skipped, but its element size is unknown.
    if (it == elem.end()) throw_bad_input(where, "storage '" + key.s + "' is used by no tensor");
    if (numel > (bytes.size() - pos) / static_cast<uint64_t>(it->second)) {
      throw_bad_input(where, "storage '" + key.s + "' extends past the end (truncated file?)");
    }
    const size_t n = static_cast<size_t>(numel) * static_cast<size_t>(it->second);
    storages[key.s] = bytes.substr(pos, n);
    pos += n;
  }
  return collect(u, root, storages, swap, where);
}

}  // namespace

StateDict parse_torch_state_dict(std::string_view bytes, const std::string& where) {
  if (bytes.size() >= 4 && le32(bytes.data()) == kLocalSig) return parse_zip(bytes, where);
  if (bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0x80) {
    return parse_legacy(bytes, where);
  }
  throw_bad_input(where, "not a PyTorch .pth file (neither a zip archive nor the legacy format)");
}

StateDict load_torch_state_dict(const fs::path& file) {
  const std::string bytes = read_file(file);
  return parse_torch_state_dict(bytes, file.string());
}

}  // namespace patchcore
