#include "routes.h"

#include <charconv>
#include <nlohmann/json.hpp>

#include "http_error.h"
#include "infer_request.h"
#include "infer_response.h"
#include "metadata.h"
#include "page.h"

using nlohmann::json;

namespace patchcore::serve {
namespace {

using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

void reply_json(httplib::Response& res, const json& j, int status = 200) {
  res.status = status;
  res.set_content(j.dump(), "application/json");
}

void reply_error(httplib::Response& res, int status, const std::string& message) {
  reply_json(res, json{{"error", message}}, status);
}

// Turns what a handler throws into a status and {"error": ...}.
Handler guarded(Handler f) {
  return [f = std::move(f)](const httplib::Request& req, httplib::Response& res) {
    try {
      f(req, res);
    } catch (const HttpError& e) {
      reply_error(res, e.status(), e.what());
    } catch (const Error& e) {
      reply_error(res, e.kind() == ErrorKind::internal ? 500 : 400, e.what());
    } catch (const json::exception& e) {
      reply_error(res, 400, std::string("the request's JSON: ") + e.what());
    } catch (const std::bad_alloc&) {
      reply_error(res, 503, "out of memory for this request; retry later or send less");
    } catch (const std::exception& e) {
      reply_error(res, 500, std::string("internal error: ") + e.what());
    }
  };
}

// The loaded model the path names (its first match), recorded for the log; 404 when absent.
std::shared_ptr<const Model> model_of(Services& s, const httplib::Request& req) {
  const std::string name = req.matches[1];
  request_context().model = name;
  auto model = s.repository.get(name);
  if (!model) throw HttpError(404, "no model '" + name + "' is loaded");
  return model;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void infer(Services& s, const httplib::Request& req, httplib::Response& res) {
  const std::string name = req.matches[1];
  auto model = model_of(s, req);
  ++s.in_flight;
  struct Leave {
    std::atomic<size_t>& n;
    ~Leave() { --n; }
  } leave{s.in_flight};
  std::optional<Batcher::Arrival> arrival(s.batcher);
  const auto t0 = std::chrono::steady_clock::now();
  InferRequest r = parse_infer_request(
      split_body(req.body, req.get_header_value("Inference-Header-Content-Length")),
      s.options.max_pixels);
  s.metrics.add_stage("request_decode", seconds_since(t0), static_cast<int64_t>(r.images.size()));
  arrival.reset();
  const std::vector<Prediction> predictions = s.batcher.run(model, r.images);
  const auto t1 = std::chrono::steady_clock::now();
  InferResponse out = make_infer_response(name, *model, r, predictions);
  s.metrics.add_stage("response_encode", seconds_since(t1),
                      static_cast<int64_t>(predictions.size()));
  if (out.content_type != "application/json")
    res.set_header("Inference-Header-Content-Length", std::to_string(out.header_length));
  res.set_content(std::move(out.body), out.content_type.c_str());
}

json repository_index(Services& s, const httplib::Request& req) {
  bool ready_only = false;
  if (!req.body.empty()) {
    const json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object())
      throw HttpError(400, "the body is not a JSON object");
    ready_only = body.value("ready", false);
  }
  json out = json::array();
  for (const Repository::Entry& e : s.repository.index()) {
    if (ready_only && !e.loaded) continue;
    out.push_back(
        {{"name", e.name}, {"version", "1"}, {"state", e.loaded ? "READY" : "UNAVAILABLE"}});
  }
  return out;
}

void add_repository(httplib::Server& server, Services& s) {
  server.Post("/v2/repository/index", guarded([&s](const auto& req, auto& res) {
                reply_json(res, repository_index(s, req));
              }));
  server.Post(R"(/v2/repository/models/([^/]+)/load)", guarded([&s](const auto& req, auto& res) {
                const std::string name = req.matches[1];
                request_context().model = name;
                try {
                  s.repository.load(name, s.log);
                } catch (const Error& e) {  // the folder's file, not the request, is bad
                  throw HttpError(500, e.what());
                }
                reply_json(res, json::object());
              }));
  server.Post(R"(/v2/repository/models/([^/]+)/unload)", guarded([&s](const auto& req, auto& res) {
                const std::string name = req.matches[1];
                request_context().model = name;
                s.repository.unload(name);
                reply_json(res, json::object());
              }));
}

void add_models(httplib::Server& server, Services& s) {
  const std::string model = R"(/v2/models/([^/]+)(?:/versions/[^/]+)?)";
  server.Get(model, guarded([&s](const auto& req, auto& res) {
               model_of(s, req);
               reply_json(res, model_metadata(req.matches[1]));
             }));
  server.Get(model + "/ready", guarded([&s](const auto& req, auto& res) {
               model_of(s, req);
               reply_json(res, {{"name", std::string(req.matches[1])}, {"ready", true}});
             }));
  server.Get(model + "/config", guarded([&s](const auto& req, auto& res) {
               reply_json(res, model_config(req.matches[1], *model_of(s, req)));
             }));
  server.Post(model + "/infer", guarded([&s](const auto& req, auto& res) { infer(s, req, res); }));
}

// The Content-Length the client sent (the body itself is not read when it is too large).
size_t declared_length(const httplib::Request& req) {
  const std::string v = req.get_header_value("Content-Length");
  size_t n = 0;
  std::from_chars(v.data(), v.data() + v.size(), n);
  return n;
}

bool open_path(const std::string& path) {
  return path == "/" || path == "/v2/health/live" || path == "/v2/health/ready";
}

void add_checks(httplib::Server& server, Services& s) {
  server.set_pre_routing_handler([&s](const httplib::Request& req, httplib::Response& res) {
    RequestContext& c = request_context();
    c = RequestContext{std::chrono::steady_clock::now(), "", true};
    if (!s.key || open_path(req.path)) return httplib::Server::HandlerResponse::Unhandled;
    const std::string key =
        request_key(req.get_header_value("Authorization"), req.get_header_value("X-API-Key"));
    if (s.key->matches(key)) return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Bearer");
    reply_error(res, 401,
                key.empty() ? "this server needs an API key: send Authorization: Bearer <key>"
                            : "wrong API key");
    return httplib::Server::HandlerResponse::Handled;
  });
  server.set_error_handler(httplib::Server::HandlerWithResponse(
      [&s](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string message = "HTTP error " + std::to_string(res.status);
        if (res.status == 400) message = "malformed HTTP request";
        if (res.status == 404) message = "no endpoint " + req.method + " " + req.path;
        if (res.status == 413 && declared_length(req) <= s.options.max_body)
          message =
              "form-encoded bodies are limited to 8192 bytes: send Content-Type: "
              "application/json (or application/octet-stream with binary data)";
        else if (res.status == 413)
          message = "the request body exceeds the server's limit of " +
                    std::to_string(s.options.max_body) + " bytes (--max-body)";
        reply_error(res, res.status, message);
        return httplib::Server::HandlerResponse::Handled;
      }));
}

}  // namespace

RequestContext& request_context() {
  thread_local RequestContext context;
  return context;
}

void add_routes(httplib::Server& server, Services& s) {
  add_checks(server, s);
  server.Get(
      "/", [](const auto&, auto& res) { res.set_content(kPageHtml, "text/html; charset=utf-8"); });
  server.Get("/v2/health/live", [](const auto&, auto& res) { reply_json(res, {{"live", true}}); });
  server.Get("/v2/health/ready", [](const auto&, auto& res) {
    reply_json(res, {{"ready", true}});
  });
  server.Get("/v2", [](const auto&, auto& res) { reply_json(res, server_metadata()); });
  server.Get("/metrics", [&s](const auto&, auto& res) {
    res.set_content(s.metrics.prometheus_text(s.batcher.queue_depth(), s.in_flight),
                    "text/plain; version=0.0.4");
  });
  add_models(server, s);
  add_repository(server, s);
}

}  // namespace patchcore::serve
