// libFuzzer target: the .pth reader (zip and legacy layouts, restricted unpickler) on any bytes.
// Any outcome but a state dict or Error(bad_input) is a finding.
#include <cstdint>
#include <string_view>

#include "error.h"
#include "torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    patchcore::parse_torch_state_dict(std::string_view(reinterpret_cast<const char*>(data), size),
                                      "fuzz.pth");
  } catch (const patchcore::Error& e) {
    if (e.kind() != patchcore::ErrorKind::bad_input) throw;  // an internal error is a bug
  }
  return 0;
}
