#include "infer_response.h"

#include <cstring>

#include "binary_data.h"

using nlohmann::json;

namespace patchcore::serve {
namespace {

// One output tensor: its values as JSON or as the little-endian bytes of binary data.
struct Tensor {
  std::string datatype;
  std::vector<int64_t> shape;
  json values = json::array();
  std::string bytes;
  bool binary = false;

  template <class T>
  void add(T v) {
    if (!binary) {
      values.push_back(v);
    } else if constexpr (std::is_same_v<T, bool>) {
      bytes.push_back(v ? 1 : 0);
    } else {
      char b[sizeof(T)];
      std::memcpy(b, &v, sizeof(T));  // x86-64 and aarch64 are little-endian, as the protocol
      bytes.append(b, sizeof(T));
    }
  }
};

Calibration calibration_for(const Model& model, const InferRequest& request) {
  Calibration c = model.calibration();
  if (request.threshold) {
    c.pixel_threshold += *request.threshold - c.image_threshold;
    c.image_threshold = *request.threshold;
  }
  return c;
}

Tensor build(const OutputChoice& output, const Model& model, const Calibration& c,
             const std::vector<Prediction>& predictions) {
  const std::string& name = output.name;
  Tensor t;
  t.binary = output.binary;
  const int64_t n = static_cast<int64_t>(predictions.size());
  if (name == "pred_score" || name == "pred_label" || name == "raw_score") {
    t.shape = {n};
    t.datatype = name == "pred_score" ? "FP32" : name == "pred_label" ? "BOOL" : "FP64";
    for (const Prediction& p : predictions) {
      if (name == "pred_score")
        t.add(static_cast<float>(normalize_score(p.score, c.image_threshold, c)));
      else if (name == "pred_label")
        t.add(p.score >= c.image_threshold);
      else
        t.add(p.score);
    }
    return t;
  }
  const bool mask = name == "pred_mask";
  t.datatype = mask ? "BOOL" : "FP32";
  t.shape = {n, predictions[0].image_height, predictions[0].image_width};
  for (const Prediction& p : predictions) {
    for (float v : model.image_map(p).values) {
      if (mask)
        t.add(v >= c.pixel_threshold);
      else
        t.add(static_cast<float>(normalize_score(v, c.pixel_threshold, c)));
    }
  }
  return t;
}

}  // namespace

InferResponse make_infer_response(const std::string& model_name, const Model& model,
                                  const InferRequest& request,
                                  const std::vector<Prediction>& predictions) {
  const Calibration c = calibration_for(model, request);
  json header{
      {"model_name", model_name},
      {"model_version", "1"},
      {"parameters", {{"threshold", c.image_threshold}, {"pixel_threshold", c.pixel_threshold}}},
      {"outputs", json::array()}};
  if (!request.id.empty()) header["id"] = request.id;
  std::vector<std::string> blobs;
  for (const OutputChoice& o : request.outputs) {
    Tensor t = build(o, model, c, predictions);
    json out{{"name", o.name}, {"datatype", t.datatype}, {"shape", t.shape}};
    if (o.binary) {
      out["parameters"] = {{"binary_data_size", t.bytes.size()}};
      blobs.push_back(std::move(t.bytes));
    } else {
      out["data"] = std::move(t.values);
    }
    header["outputs"].push_back(std::move(out));
  }
  InferResponse r;
  if (blobs.empty()) {
    r.body = header.dump();
    r.content_type = "application/json";
  } else {
    r.body = join_body(header, blobs, r.header_length);
    r.content_type = "application/octet-stream";
  }
  return r;
}

}  // namespace patchcore::serve
