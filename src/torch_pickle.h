// Reading a PyTorch state_dict (torch.save of a dict of tensors) without Python.
//
// Two on-disk formats exist and both are read:
//  - zip (torch >= 1.6): entries <prefix>/data.pkl (the pickle), <prefix>/data/<key> (raw
//    storages), <prefix>/version and maybe <prefix>/byteorder ("little" / "big"). Entries are
//    STORED (torch never compresses them); CRC-32 is checked.
//  - legacy (torch < 1.6; e.g. torchvision's 2019 downloads such as wide_resnet50_2-95faca4d.pth):
//    consecutive pickles (magic number, protocol 1001, sys_info, the object, the storage keys),
//    then per key an int64 element count and the raw storage bytes.
//
// The pickle is read by a RESTRICTED unpickler: it knows only the opcodes a state_dict needs and
// only the globals collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter and torch.<Type>Storage. Nothing in the file is ever executed;
// any other global or opcode (os.system, builtins.eval, INST, OBJ, NEWOBJ, ...) is rejected
// with Error(bad_input) naming the file, the global or opcode and its byte offset. Every length,
// index and offset is checked against the input, so truncated or corrupted files fail cleanly.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "tensor.h"

namespace patchcore {

/// Tensors by state_dict key, converted to contiguous float32 whatever their stored type
/// (float, double, half, bfloat16, and integer/bool types such as num_batches_tracked).
/// A checkpoint dict holding the weights under "state_dict" or "model" is unwrapped, and a
/// "module." prefix on every key (nn.DataParallel) is removed.
using StateDict = std::map<std::string, Tensor>;

/// Reads a .pth file. Throws Error(bad_input) naming the file on any problem.
StateDict load_torch_state_dict(const std::filesystem::path& file);

/// The same from bytes in memory; `where` names the source in error messages.
StateDict parse_torch_state_dict(std::string_view bytes, const std::string& where);

// Lower layers, exposed for tests.

struct ZipEntry {
  std::string name;
  std::string_view data;  ///< points into the archive bytes
};

/// The entries of a zip archive whose entries are all stored (no compression), CRC-checked.
/// Reads the central directory (zip64 records included). Throws Error(bad_input).
std::vector<ZipEntry> read_stored_zip(std::string_view archive, const std::string& where);

/// CRC-32 (IEEE, as zip uses).
uint32_t crc32(std::string_view bytes);

}  // namespace patchcore
