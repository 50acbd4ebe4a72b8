#include "server.h"

#include <pthread.h>
#include <signal.h>

#include <iostream>
#include <thread>

#include "access_log.h"
#include "routes.h"

namespace patchcore::serve {
namespace {

int resolve_max_batch(const ServerOptions& o, const Repository& repository) {
  if (o.max_batch > 0) return o.max_batch;
  int batch = 1;
  for (const Repository::Entry& e : repository.index())
    if (auto m = repository.get(e.name)) batch = std::max(batch, m->params().batch_size);
  return std::max(batch, 8);
}

void log_request(Services& s, const httplib::Request& req, const httplib::Response& res) {
  RequestContext& c = request_context();
  const auto now = std::chrono::steady_clock::now();
  const double seconds = c.started ? std::chrono::duration<double>(now - c.start).count() : 0;
  s.metrics.observe_request(c.model, res.status, seconds);
  write_access_log(AccessRecord{req.remote_addr, req.method, req.path, c.model, res.status, seconds,
                                req.body.size(), res.body.size()});
  c = RequestContext{};
}

void configure(httplib::Server& http, Services& s) {
  const size_t threads = static_cast<size_t>(std::max(2, s.options.connections));
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(s.options.max_body);
  http.set_keep_alive_max_count(1000);
  http.set_read_timeout(30);
  http.set_write_timeout(30);
  http.set_tcp_nodelay(true);
  http.set_logger([&s](const auto& req, const auto& res) { log_request(s, req, res); });
  add_routes(http, s);
}

// Blocks SIGTERM and SIGINT in every thread started from here on; one thread waits for them
// and stops the server, which then answers what it has accepted before listen() returns.
sigset_t block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

std::thread stop_on_signal(httplib::Server& http, sigset_t set, const std::atomic<bool>& done) {
  return std::thread([&http, set, &done] {
    int sig = 0;
    sigwait(&set, &sig);
    if (done) return;  // woken by run_server itself: listen() has already returned
    std::cerr << "patchcore serve: " << (sig == SIGINT ? "SIGINT" : "SIGTERM")
              << ": finishing the requests in flight\n";
    // A signal between bind and listen would find the server not yet running.
    while (!http.is_running() && !done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    http.stop();
  });
}

}  // namespace

void run_server(const ServerOptions& o) {
  const sigset_t signals = block_stop_signals();
  Callbacks log;
  log.log = [](LogLevel level, const std::string& m) {
    if (level != LogLevel::debug) std::cerr << "patchcore serve: " << m << "\n";
  };
  std::optional<ApiKey> key;
  if (!o.api_key_file.empty()) key = ApiKey::from_file(o.api_key_file);
  Repository repository(o.models, o.threads, o.engine, o.precision);
  repository.load_all(log);
  Metrics metrics;
  Batcher batcher({resolve_max_batch(o, repository), o.batch_wait, o.max_queue}, metrics);
  Services services{o, repository, batcher, metrics, key, log};
  httplib::Server http;
  configure(http, services);
  const int port = o.port == 0 ? http.bind_to_any_port(o.host)
                               : (http.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port < 0)
    throw Error(ErrorKind::usage, "cannot listen on " + o.host + ":" + std::to_string(o.port) +
                                      " (in use, or not an address of this machine)");
  std::cout << "patchcore serve: listening on http://" << o.host << ":" << port << "/" << std::endl;
  if (!key && o.host != "127.0.0.1" && o.host != "::1" && o.host != "localhost")
    log.log(LogLevel::warning, "listening beyond loopback without --api-key-file");
  std::atomic<bool> done{false};
  std::thread stopper = stop_on_signal(http, signals, done);
  http.listen_after_bind();
  done = true;
  pthread_kill(stopper.native_handle(), SIGTERM);
  stopper.join();
  std::cerr << "patchcore serve: stopped\n";
}

}  // namespace patchcore::serve
