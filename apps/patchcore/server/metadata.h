// The Open Inference Protocol's metadata answers: server, model, and model configuration.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "patchcore/patchcore.h"

namespace patchcore::serve {

/// GET /v2: name, version and the protocol extensions served.
nlohmann::json server_metadata();
/// GET /v2/models/{name}: inputs and outputs with datatypes and shapes (-1: variable).
nlohmann::json model_metadata(const std::string& name);
/// GET /v2/models/{name}/config: what `patchcore info` shows, and the calibration.
nlohmann::json model_config(const std::string& name, const Model& model);

}  // namespace patchcore::serve
