#include "metadata.h"

using nlohmann::json;

namespace patchcore::serve {

json server_metadata() {
  return {{"name", "patchcore"},
          {"version", PATCHCORE_VERSION},
          {"extensions", {"binary_tensor_data", "model_repository", "model_configuration"}}};
}

json model_metadata(const std::string& name) {
  auto tensor = [](const char* n, const char* type, std::vector<int> shape) {
    return json{{"name", n}, {"datatype", type}, {"shape", shape}};
  };
  return {{"name", name},
          {"versions", {"1"}},
          {"platform", "patchcore"},
          {"inputs", {tensor("image", "BYTES", {-1})}},
          {"outputs",
           {tensor("pred_score", "FP32", {-1}), tensor("pred_label", "BOOL", {-1}),
            tensor("raw_score", "FP64", {-1}), tensor("anomaly_map", "FP32", {-1, -1, -1}),
            tensor("pred_mask", "BOOL", {-1, -1, -1})}}};
}

json model_config(const std::string& name, const Model& model) {
  const Calibration& c = model.calibration();
  return {{"name", name},
          {"platform", "patchcore"},
          {"calibration",
           {{"image_threshold", c.image_threshold},
            {"pixel_threshold", c.pixel_threshold},
            {"min_score", c.min_score},
            {"max_score", c.max_score},
            {"source", c.source}}},
          {"map_size", model.map_size()},
          {"info", json::parse(model.info_json())}};
}

}  // namespace patchcore::serve
