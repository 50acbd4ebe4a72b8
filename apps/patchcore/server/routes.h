// The HTTP endpoints: health, metadata, inference, repository, metrics and the page.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>

#include "auth.h"
#include "batcher.h"
#include "repository.h"
#include "server.h"
#include "server_metrics.h"

namespace patchcore::serve {

/// What the handlers share; outlives the HTTP server.
struct Services {
  const ServerOptions& options;
  Repository& repository;
  Batcher& batcher;
  Metrics& metrics;
  std::optional<ApiKey> key;
  Callbacks log;
  std::atomic<size_t> in_flight{0};
};

/// What the access log and the metrics need of the request a handler thread is serving
/// (httplib runs a request's routing, handler and logger on one thread).
struct RequestContext {
  std::chrono::steady_clock::time_point start;
  std::string model;
  bool started = false;
};
RequestContext& request_context();

/// Registers every endpoint, the API key check and the {"error": ...} bodies of errors.
void add_routes(httplib::Server& server, Services& services);

}  // namespace patchcore::serve
