// `patchcore serve`: the Open Inference Protocol (KServe v2) over HTTP, a web page, metrics.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

#include "patchcore/patchcore.h"

namespace patchcore::serve {

struct ServerOptions {
  std::filesystem::path models;  ///< folder of *.patchcore files, served under their stems
  std::string host = "127.0.0.1";
  int port = 8000;  ///< 0: any free port (printed on the first line of stdout)
  int threads = 0;  ///< engine threads; 0: all cores
  BackboneEngine engine = Params{}.engine;   ///< what runs the backbones
  Precision precision = Params{}.precision;  ///< their arithmetic
  std::filesystem::path api_key_file;        ///< empty: no key required
  size_t max_body = size_t{64} << 20;
  int64_t max_pixels = 50'000'000;
  size_t max_queue = 64;
  int max_batch = 0;  ///< images per engine call; 0: the model's batch size
  std::chrono::microseconds batch_wait{2000};
  int connections = 64;  ///< HTTP handler threads: connections served at once
};

/// Loads the models, serves until SIGTERM or SIGINT, then answers what is in flight and
/// returns. Throws Error(bad_input) when the folder, a model or the key file cannot be read,
/// and Error(usage) when the address cannot be bound.
void run_server(const ServerOptions& options);

}  // namespace patchcore::serve
