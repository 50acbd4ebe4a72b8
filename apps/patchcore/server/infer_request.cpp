#include "infer_request.h"

#include <algorithm>

#include "base64.h"
#include "http_error.h"

using nlohmann::json;

namespace patchcore::serve {
namespace {

[[noreturn]] void bad(const std::string& message) { throw HttpError(400, message); }

std::vector<int64_t> read_shape(const json& input) {
  const auto it = input.find("shape");
  if (it == input.end() || !it->is_array()) bad("inputs[0].shape: missing or not an array");
  std::vector<int64_t> shape;
  for (const json& d : *it) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      bad("inputs[0].shape: " + it->dump() + " holds something other than sizes >= 0");
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

// The binary section's bytes for the input when its parameters ask for it, else nullopt.
std::optional<std::string_view> binary_part(const json& input, std::string_view binary) {
  const auto params = input.find("parameters");
  if (params == input.end() || !params->is_object() || !params->contains("binary_data_size"))
    return std::nullopt;
  const json& size = (*params)["binary_data_size"];
  if (!size.is_number_unsigned() || size.get<uint64_t>() != binary.size())
    bad("inputs[0].parameters.binary_data_size: " + size.dump() + " does not match the " +
        std::to_string(binary.size()) + " bytes after the JSON header");
  return binary;
}

void check_pixels(int64_t height, int64_t width, int64_t max_pixels, const std::string& name) {
  if (max_pixels > 0 && height * width > max_pixels)
    throw HttpError(413, name + ": " + std::to_string(width) + " x " + std::to_string(height) +
                             " pixels exceed the server's limit of " + std::to_string(max_pixels) +
                             " (--max-pixels)");
}

void add_encoded(InferRequest& r, std::string_view bytes, int64_t max_pixels) {
  const std::string name = "inputs[0] element " + std::to_string(r.images.size());
  try {
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    const ImageHeader h = probe_image(data, bytes.size(), name);
    check_pixels(h.height, h.width, max_pixels, name);
    Image image = decode_image(data, bytes.size(), name, max_pixels);
    r.buffers.push_back(std::move(image.pixels));
    r.images.push_back(ImageView{r.buffers.back().data(), image.height, image.width, 3, 0, name});
  } catch (const Error& e) {
    bad(e.what());
  }
}

void read_bytes_tensor(InferRequest& r, const json& input, std::string_view binary,
                       int64_t max_pixels) {
  const std::vector<int64_t> shape = read_shape(input);
  if (shape.empty() || shape.size() > 2 || (shape.size() == 2 && shape[1] != 1))
    bad("inputs[0].shape: a BYTES tensor of images is [N] (or [N, 1])");
  const size_t n = static_cast<size_t>(shape[0]);
  if (auto part = binary_part(input, binary)) {
    for (std::string_view e : bytes_elements(*part, n, "inputs[0]")) add_encoded(r, e, max_pixels);
    return;
  }
  const auto data = input.find("data");
  if (data == input.end() || !data->is_array() || data->size() != n)
    bad("inputs[0].data: expected an array of " + std::to_string(n) + " base64 strings");
  for (const json& e : *data) {
    if (!e.is_string()) bad("inputs[0].data: an element is not a base64 string");
    auto bytes = base64_decode(e.get_ref<const std::string&>());
    if (!bytes) bad("inputs[0].data[" + std::to_string(r.images.size()) + "]: not valid base64");
    add_encoded(r, *bytes, max_pixels);
  }
}

void flatten_uint8(const json& v, std::vector<uint8_t>& out) {
  if (v.is_array()) {
    for (const json& e : v) flatten_uint8(e, out);
    return;
  }
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 255)
    bad("inputs[0].data: " + v.dump() + " is not a UINT8 value");
  out.push_back(static_cast<uint8_t>(v.get<int64_t>()));
}

void read_uint8_tensor(InferRequest& r, const json& input, std::string_view binary,
                       int64_t max_pixels) {
  const std::vector<int64_t> s = read_shape(input);
  if (s.size() != 4 || (s[3] != 1 && s[3] != 3 && s[3] != 4) || s[1] == 0 || s[2] == 0)
    bad("inputs[0].shape: a UINT8 tensor of images is [N, H, W, C] with C 1, 3 or 4");
  check_pixels(s[1], s[2], max_pixels, "inputs[0]");
  const int64_t per_image = s[1] * s[2] * s[3];
  const int64_t total = s[0] * per_image;  // bounded: the body already fit --max-body
  std::vector<uint8_t> pixels;
  if (auto part = binary_part(input, binary)) {
    pixels.assign(part->begin(), part->end());
  } else {
    const auto data = input.find("data");
    if (data == input.end()) bad("inputs[0].data: missing");
    flatten_uint8(*data, pixels);
  }
  if (static_cast<int64_t>(pixels.size()) != total)
    bad("inputs[0]: shape " + input["shape"].dump() + " needs " + std::to_string(total) +
        " bytes, the data has " + std::to_string(pixels.size()));
  r.buffers.push_back(std::move(pixels));
  for (int64_t i = 0; i < s[0]; ++i)
    r.images.push_back(ImageView{r.buffers.back().data() + i * per_image, int(s[1]), int(s[2]),
                                 int(s[3]), 0, "inputs[0] element " + std::to_string(i)});
}

bool bool_parameter(const json& params, const char* name) {
  if (!params.is_object() || !params.contains(name)) return false;
  if (!params[name].is_boolean()) bad(std::string("parameters.") + name + ": not a boolean");
  return params[name].get<bool>();
}

void read_outputs(InferRequest& r, const json& body) {
  const json params = body.value("parameters", json::object());
  const bool all_binary = bool_parameter(params, "binary_data_output");
  const auto outputs = body.find("outputs");
  if (outputs == body.end()) {
    for (const std::string& n : kDefaultOutputs) r.outputs.push_back({n, all_binary});
    return;
  }
  if (!outputs->is_array()) bad("outputs: not an array");
  for (const json& o : *outputs) {
    if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
      bad("outputs: an element has no name");
    const std::string name = o["name"];
    if (std::find(kOutputNames.begin(), kOutputNames.end(), name) == kOutputNames.end())
      bad("outputs: no output named '" + name + "'");
    const json p = o.value("parameters", json::object());
    r.outputs.push_back({name, all_binary || bool_parameter(p, "binary_data")});
  }
}

void read_threshold(InferRequest& r, const json& body) {
  const auto params = body.find("parameters");
  if (params == body.end() || !params->is_object() || !params->contains("threshold")) return;
  const json& t = (*params)["threshold"];
  if (!t.is_number()) bad("parameters.threshold: not a number");
  r.threshold = t.get<double>();
}

// Maps are tensors [N, H, W]: every image of the request must then have one size.
void check_map_sizes(const InferRequest& r) {
  const bool maps = std::any_of(r.outputs.begin(), r.outputs.end(), [](const OutputChoice& o) {
    return o.name == "anomaly_map" || o.name == "pred_mask";
  });
  if (!maps) return;
  for (const ImageView& v : r.images)
    if (v.height != r.images[0].height || v.width != r.images[0].width)
      bad("outputs: anomaly_map and pred_mask need images of one size; " + v.name + " is " +
          std::to_string(v.width) + " x " + std::to_string(v.height) + ", the first " +
          std::to_string(r.images[0].width) + " x " + std::to_string(r.images[0].height));
}

}  // namespace

InferRequest parse_infer_request(const SplitBody& body, int64_t max_pixels) {
  const json& j = body.header;
  InferRequest r;
  if (j.contains("id")) {
    if (!j["id"].is_string()) bad("id: not a string");
    r.id = j["id"];
  }
  const auto inputs = j.find("inputs");
  if (inputs == j.end() || !inputs->is_array() || inputs->size() != 1 || !(*inputs)[0].is_object())
    bad("inputs: expected an array of one tensor (the images)");
  const json& input = (*inputs)[0];
  const std::string datatype = input.value("datatype", "");
  if (datatype == "BYTES")
    read_bytes_tensor(r, input, body.binary, max_pixels);
  else if (datatype == "UINT8")
    read_uint8_tensor(r, input, body.binary, max_pixels);
  else
    bad("inputs[0].datatype: '" + datatype + "'; expected BYTES (encoded images) or UINT8");
  if (r.images.empty()) bad("inputs[0]: no image");
  read_outputs(r, j);
  read_threshold(r, j);
  check_map_sizes(r);
  return r;
}

}  // namespace patchcore::serve
