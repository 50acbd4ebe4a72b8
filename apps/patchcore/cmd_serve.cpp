// `patchcore serve`: the verb's options; the server itself is in server/.
#include "cli.h"
#include "server/server.h"

namespace patchcore::cli {

void add_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "serve",
      "serve the models of a folder over HTTP: Open Inference Protocol (KServe v2) at /v2, "
      "a web page at /, Prometheus metrics at /metrics");
  auto o = std::make_shared<serve::ServerOptions>();
  auto wait_ms = std::make_shared<double>(2.0);
  auto engine = std::make_shared<std::string>(to_string(o->engine));
  auto precision = std::make_shared<std::string>(to_string(o->precision));
  cmd->add_option("--models", o->models, "folder of *.patchcore files, served under their names")
      ->required();
  cmd->add_option("--host", o->host, "address to listen on (loopback unless you mean otherwise)")
      ->capture_default_str();
  cmd->add_option("--port", o->port, "0: any free port (printed on stdout)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--threads", o->threads, "engine threads (0: all cores)")->capture_default_str();
  add_engine_option(*cmd, *engine)->capture_default_str();
  add_precision_option(*cmd, *precision)->capture_default_str();
  cmd->add_option("--api-key-file", o->api_key_file,
                  "file whose first line is the key every request must carry "
                  "(Authorization: Bearer <key>); the page and health probes stay open");
  cmd->add_option("--max-body", o->max_body, "largest request body in bytes (413 beyond)")
      ->capture_default_str();
  cmd->add_option("--max-pixels", o->max_pixels,
                  "largest image in pixels, checked from its header before decoding (413 beyond)")
      ->capture_default_str();
  cmd->add_option("--max-queue", o->max_queue,
                  "inference requests waiting for the engine before 503")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-batch", o->max_batch,
                  "images per engine call (0: the largest model batch size, at least 8)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch-wait-ms", *wait_ms,
                  "longest wait for requests already arriving before a batch starts")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1000.0));
  cmd->add_option("--connections", o->connections, "connections served at once")
      ->capture_default_str()
      ->check(CLI::Range(2, 4096));
  cmd->callback([o, wait_ms, engine, precision] {
    o->engine = engine_from_string(*engine);
    o->precision = precision_from_string(*precision);
    o->batch_wait = std::chrono::microseconds(static_cast<int64_t>(*wait_ms * 1000));
    serve::run_server(*o);
  });
}

}  // namespace patchcore::cli
