// End-to-end: `patchcore serve` started on a free loopback port, spoken to over HTTP.
#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "test_support.h"

namespace fs = std::filesystem;
using nlohmann::json;
using patchcore::testing::read_bytes;
using patchcore::testing::TempDir;
using patchcore::testing::write_bytes;

namespace {

const std::string kBinary = std::string(PATCHCORE_BINARY_DIR) + "/patchcore";

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs the CLI; returns its stdout (the exit code must be 0).
std::string run_cli(const std::vector<std::string>& args, const fs::path& err) {
  std::string cmd = quote(kBinary);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " 2>" + quote(err.string()) + " </dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << cmd << "\n" << read_bytes(err);
  return out;
}

// A textured image (smooth noise) of the seed; with a bright square when `defect`.
cv::Mat texture(int seed, int height, int width, bool defect) {
  cv::RNG rng(seed);
  cv::Mat small(height / 8, width / 8, CV_8UC3);
  rng.fill(small, cv::RNG::UNIFORM, 60, 200);
  cv::Mat img;
  cv::resize(small, img, cv::Size(width, height), 0, 0, cv::INTER_CUBIC);
  if (defect)
    cv::rectangle(img, cv::Rect(width / 3, height / 3, width / 5, height / 5),
                  cv::Scalar(255, 255, 255), cv::FILLED);
  return img;
}

// `patchcore serve` as a child process; stopped (SIGTERM) and reaped on destruction.
class Server {
 public:
  explicit Server(const fs::path& models, const fs::path& log,
                  const std::vector<std::string>& extra = {}) {
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    std::vector<std::string> args = {kBinary, "serve", "--models", models.string(), "--port", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    if (std::find(extra.begin(), extra.end(), "--threads") == extra.end())
      args.insert(args.end(), {"--threads", "2"});
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      const int err = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(err, STDERR_FILENO);
      close(out[0]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    port_ = read_port(out[0]);
    close(out[0]);
  }
  ~Server() {
    if (pid_ > 0) stop();
  }
  // SIGTERM, then the exit status (-1 when killed or not exited within 60 s).
  int stop() {
    kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 6000; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      usleep(10000);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return -1;
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120);
    return c;
  }

 private:
  // The first stdout line: "patchcore serve: listening on http://127.0.0.1:PORT/".
  static int read_port(int fd) {
    std::string line;
    pollfd p{fd, POLLIN, 0};
    while (line.find('\n') == std::string::npos && poll(&p, 1, 60000) > 0) {
      char c[256];
      const ssize_t n = read(fd, c, sizeof c);
      if (n <= 0) break;
      line.append(c, static_cast<size_t>(n));
    }
    const auto colon = line.rfind(':');
    return colon == std::string::npos ? -1 : std::atoi(line.c_str() + colon + 1);
  }
  pid_t pid_ = -1;
  int port_ = -1;
};

std::string b64(const std::string& bytes) {
  static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  int val = 0, bits = -6;
  for (unsigned char c : bytes) {
    val = (val << 8) + c;
    bits += 8;
    for (; bits >= 0; bits -= 6) out.push_back(a[(val >> bits) & 0x3F]);
  }
  if (bits > -6) out.push_back(a[((val << 8) >> (bits + 8)) & 0x3F]);
  while (out.size() % 4) out.push_back('=');
  return out;
}

json base64_request(const std::vector<fs::path>& images) {
  json data = json::array();
  for (const auto& f : images) data.push_back(b64(read_bytes(f)));
  return {
      {"inputs",
       {{{"name", "image"}, {"datatype", "BYTES"}, {"shape", {images.size()}}, {"data", data}}}}};
}

// A body of the binary tensor data extension: JSON, then each image as length + bytes.
std::pair<std::string, size_t> binary_request(const std::vector<fs::path>& images,
                                              const json& outputs) {
  std::string blob;
  for (const auto& f : images) {
    const std::string bytes = read_bytes(f);
    const uint32_t n = static_cast<uint32_t>(bytes.size());
    for (int i = 0; i < 4; ++i) blob.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    blob += bytes;
  }
  json header{{"inputs",
               {{{"name", "image"},
                 {"datatype", "BYTES"},
                 {"shape", {images.size()}},
                 {"parameters", {{"binary_data_size", blob.size()}}}}}},
              {"outputs", outputs}};
  const std::string h = header.dump();
  return {h + blob, h.size()};
}

httplib::Result post_json(httplib::Client& c, const std::string& path, const json& body) {
  return c.Post(path.c_str(), body.dump(), "application/json");
}

json output(const json& response, const std::string& name) {
  for (const json& o : response["outputs"])
    if (o["name"] == name) return o;
  ADD_FAILURE() << "no output " << name << " in " << response.dump().substr(0, 500);
  return json::object();
}

int metric(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + " ", 0) == 0) return std::atoi(line.c_str() + name.size() + 1);
  return -1;
}

struct CliPrediction {
  double score = 0, normalized = 0;
  bool anomalous = false;
};

// One small model (served as "a" and "b") and test images for the whole suite: fitting is slow.
class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (patchcore::testing::built_backbones_dir().empty()) return;
    tmp_ = new TempDir();
    fs::create_directories(dir() / "train");
    fs::create_directories(dir() / "test");
    fs::create_directories(dir() / "models");
    for (int i = 0; i < 10; ++i)
      cv::imwrite((dir() / "train" / (std::to_string(i) + ".png")).string(),
                  texture(i, 96, 96, false));
    for (int i = 0; i < 5; ++i) {
      const fs::path f = dir() / "test" / ("t" + std::to_string(i) + ".png");
      cv::imwrite(f.string(), texture(100 + i, 96, 96, i >= 3));
      images_.push_back(f);
    }
    cv::imwrite((dir() / "wide.png").string(), texture(200, 48, 80, true));
    const fs::path model = dir() / "models" / "a.patchcore";
    run_cli({"fit", "--data", (dir() / "train").string(), "--out", model.string(), "--backbone",
             "mobilenet_v2", "--image-size", "96", "--coreset-ratio", "0.2", "--threads", "2"},
            dir() / "fit.txt");
    fs::copy_file(model, dir() / "models" / "b.patchcore");
    std::istringstream lines(
        run_cli({"predict", "--model", model.string(), "--threads", "2", (dir() / "test").string()},
                dir() / "predict.txt"));
    for (std::string line; std::getline(lines, line);) {
      const json j = json::parse(line);
      cli_[fs::path(j["path"].get<std::string>()).filename().string()] = {
          j["score"], j["normalized_score"], j["label"] == "anomalous"};
    }
    server_ = new Server(dir() / "models", dir() / "server.log");
  }
  static void TearDownTestSuite() {
    delete server_;
    delete tmp_;
    server_ = nullptr;
    tmp_ = nullptr;
  }
  void SetUp() override {
    if (!tmp_) GTEST_SKIP() << "build/backbones missing: run scripts/setup";
    ASSERT_EQ(cli_.size(), images_.size());
    ASSERT_GT(server_->port(), 0) << read_bytes(dir() / "server.log");
  }
  static fs::path dir() { return tmp_->path(); }
  static httplib::Client client() { return server_->client(); }

  static TempDir* tmp_;
  static Server* server_;
  static std::vector<fs::path> images_;
  static std::map<std::string, CliPrediction> cli_;
};
TempDir* Serve::tmp_ = nullptr;
Server* Serve::server_ = nullptr;
std::vector<fs::path> Serve::images_;
std::map<std::string, CliPrediction> Serve::cli_;

TEST_F(Serve, HealthMetadataAndPage) {
  auto c = client();
  for (const char* path : {"/v2/health/live", "/v2/health/ready", "/v2/models/a/ready",
                           "/v2/models/a/versions/1", "/v2/models/a/versions/1/ready"}) {
    auto r = c.Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path;
  }
  auto v2 = c.Get("/v2");
  ASSERT_TRUE(v2);
  const json server = json::parse(v2->body);
  EXPECT_EQ(server["name"], "patchcore");
  EXPECT_NE(server["extensions"].dump().find("binary_tensor_data"), std::string::npos);
  EXPECT_NE(server["extensions"].dump().find("model_repository"), std::string::npos);

  auto meta = c.Get("/v2/models/a");
  ASSERT_TRUE(meta);
  const json m = json::parse(meta->body);
  EXPECT_EQ(m["name"], "a");
  EXPECT_EQ(m["inputs"][0]["datatype"], "BYTES");
  EXPECT_EQ(m["inputs"][0]["shape"], json({-1}));
  std::map<std::string, std::string> types;
  for (const json& o : m["outputs"]) types[o["name"]] = o["datatype"];
  EXPECT_EQ(types["pred_score"], "FP32");
  EXPECT_EQ(types["pred_label"], "BOOL");
  EXPECT_EQ(types["anomaly_map"], "FP32");
  EXPECT_EQ(types["pred_mask"], "BOOL");

  auto config = c.Get("/v2/models/a/config");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->status, 200);
  EXPECT_TRUE(json::parse(config->body)["calibration"].contains("image_threshold"));

  auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->get_header_value("Content-Type").find("text/html"), std::string::npos);
  EXPECT_NE(page->body.find("/v2/models/"), std::string::npos);  // the page calls the API

  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("# TYPE patchcore_requests_total counter"), std::string::npos);
  EXPECT_NE(metrics->body.find("patchcore_requests_total{model=\"a\",code=\"200\"}"),
            std::string::npos);
  EXPECT_GE(metric(metrics->body, "patchcore_queue_depth"), 0);
}

TEST_F(Serve, ScoresEqualPredict) {
  auto c = client();
  auto r = post_json(c, "/v2/models/a/infer", base64_request(images_));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  const json raw = output(j, "raw_score"), score = output(j, "pred_score"),
             label = output(j, "pred_label");
  EXPECT_EQ(raw["shape"], json({images_.size()}));
  for (size_t i = 0; i < images_.size(); ++i) {
    const CliPrediction& p = cli_.at(images_[i].filename().string());
    EXPECT_NEAR(raw["data"][i].get<double>(), p.score, 1e-6) << images_[i];
    EXPECT_NEAR(score["data"][i].get<double>(), p.normalized, 1e-6) << images_[i];
    EXPECT_EQ(label["data"][i].get<bool>(), p.anomalous) << images_[i];
  }
  // The defects (t3, t4) score above every normal image.
  EXPECT_GT(std::min(raw["data"][3].get<double>(), raw["data"][4].get<double>()),
            std::max({raw["data"][0].get<double>(), raw["data"][1].get<double>(),
                      raw["data"][2].get<double>()}));
}

TEST_F(Serve, EngineAndPrecisionAreTheServersChoice) {
  // bf16 where the CPU has it (else fp32 with a warning): the scores equal predict's with the
  // same option, whichever ran.
  const fs::path model = dir() / "models" / "a.patchcore";
  std::istringstream lines(run_cli({"predict", "--model", model.string(), "--threads", "2",
                                    "--precision", "bf16", (dir() / "test").string()},
                                   dir() / "predict_bf16.txt"));
  std::map<std::string, double> expected;
  for (std::string line; std::getline(lines, line);) {
    const json j = json::parse(line);
    expected[fs::path(j["path"].get<std::string>()).filename().string()] = j["score"];
  }
  ASSERT_EQ(expected.size(), images_.size());
  const std::string isa = patchcore::dnnl_isa();
  if (isa == "avx512_core_amx" || isa == "avx512_core_bf16") {
    double moved = 0;  // bf16 ran: the scores are not fp32's, so the server's equality means it
    for (const auto& [name, score] : expected)  // ran bf16 too
      moved = std::max(moved, std::abs(score - cli_.at(name).score));
    EXPECT_GT(moved, 1e-5);
  }
  Server bf16(dir() / "models", dir() / "server_bf16.log", {"--precision", "bf16"});
  ASSERT_GT(bf16.port(), 0) << read_bytes(dir() / "server_bf16.log");
  auto c = bf16.client();
  auto r = post_json(c, "/v2/models/a/infer", base64_request(images_));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json raw = output(json::parse(r->body), "raw_score");
  for (size_t i = 0; i < images_.size(); ++i)
    EXPECT_NEAR(raw["data"][i].get<double>(), expected.at(images_[i].filename().string()), 1e-6)
        << images_[i];
  // A value outside the choices is refused before anything is served.
  Server bad(dir() / "models", dir() / "server_bad.log", {"--precision", "fp8"});
  EXPECT_LE(bad.port(), 0);
  EXPECT_EQ(bad.stop(), 2);
  EXPECT_NE(read_bytes(dir() / "server_bad.log").find("--precision"), std::string::npos);
}

TEST_F(Serve, BinaryExtensionMapsAndMask) {
  auto c = client();
  const json outputs = {{{"name", "raw_score"}},
                        {{"name", "anomaly_map"}, {"parameters", {{"binary_data", true}}}},
                        {{"name", "pred_mask"}, {"parameters", {{"binary_data", true}}}}};
  const std::vector<fs::path> two = {images_[0], images_[3]};
  auto [body, header_length] = binary_request(two, outputs);
  httplib::Headers h = {{"Inference-Header-Content-Length", std::to_string(header_length)}};
  auto r = c.Post("/v2/models/a/infer", h, body, "application/octet-stream");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body.substr(0, 500);
  const size_t n = std::stoul(r->get_header_value("Inference-Header-Content-Length"));
  const json j = json::parse(r->body.substr(0, n));
  const json map = output(j, "anomaly_map"), mask = output(j, "pred_mask");
  EXPECT_EQ(map["shape"], json({2, 96, 96}));
  EXPECT_EQ(map["datatype"], "FP32");
  const size_t pixels = 2 * 96 * 96;
  ASSERT_EQ(map["parameters"]["binary_data_size"], pixels * 4);
  ASSERT_EQ(mask["parameters"]["binary_data_size"], pixels);
  ASSERT_EQ(r->body.size(), n + pixels * 5);
  std::vector<float> values(pixels);
  std::memcpy(values.data(), r->body.data() + n, pixels * 4);
  const char* m = r->body.data() + n + pixels * 4;
  size_t disagree = 0, masked[2] = {0, 0};
  for (size_t i = 0; i < pixels; ++i) {
    ASSERT_GE(values[i], 0.f);
    ASSERT_LE(values[i], 1.f);
    // The map is normalised with the pixel threshold at 0.5, the mask is map >= threshold.
    if ((values[i] >= 0.5f) != (m[i] == 1)) ++disagree;
    masked[i / (96 * 96)] += m[i] == 1;
  }
  EXPECT_LE(disagree, 2u);          // float rounding at the threshold only
  EXPECT_GT(masked[1], masked[0]);  // the defect image has the larger mask
  for (size_t i = 0; i < two.size(); ++i)
    EXPECT_NEAR(output(j, "raw_score")["data"][i].get<double>(),
                cli_.at(two[i].filename().string()).score, 1e-6);
}

TEST_F(Serve, Uint8TensorEqualsEncodedImage) {
  cv::Mat bgr = cv::imread(images_[3].string()), rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  json data = json::array();
  for (int i = 0; i < rgb.rows * rgb.cols * 3; ++i) data.push_back(rgb.data[i]);
  json req{{"inputs",
            {{{"name", "image"},
              {"datatype", "UINT8"},
              {"shape", {1, rgb.rows, rgb.cols, 3}},
              {"data", data}}}}};
  auto c = client();
  auto r = post_json(c, "/v2/models/a/infer", req);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_NEAR(output(json::parse(r->body), "raw_score")["data"][0].get<double>(),
              cli_.at(images_[3].filename().string()).score, 1e-6);
}

TEST_F(Serve, ThresholdParameterOverridesForTheCall) {
  auto c = client();
  for (double t : {0.0, 1e9}) {
    json req = base64_request({images_[0], images_[3]});
    req["parameters"] = {{"threshold", t}};
    auto r = post_json(c, "/v2/models/a/infer", req);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const json j = json::parse(r->body);
    EXPECT_EQ(j["parameters"]["threshold"].get<double>(), t);
    for (const json& l : output(j, "pred_label")["data"]) EXPECT_EQ(l.get<bool>(), t == 0.0);
  }
}

TEST_F(Serve, BadRequestsAre400NamingTheField) {
  auto c = client();
  const json good = base64_request({images_[0]});
  auto with = [&](const std::string& pointer, const json& value) {
    json j = good;
    j[json::json_pointer(pointer)] = value;
    return j.dump();
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "JSON"},
      {with("/inputs/0/datatype", "FP32"), "datatype"},
      {with("/inputs/0/shape", json({1, 2, 3})), "shape"},
      {with("/inputs/0/shape", json({2})), "data"},
      {with("/inputs/0/data/0", "!!!not base64!!!"), "base64"},
      {with("/inputs/0/data/0", b64("not an image at all")), "inputs[0] element 0"},
      {with("/outputs", json::array({{{"name", "heatmap"}}})), "heatmap"},
      {with("/parameters", json{{"threshold", "high"}}), "threshold"},
      {json{{"inputs", json::array()}}.dump(), "inputs"},
  };
  for (const auto& [body, field] : cases) {
    auto r = c.Post("/v2/models/a/infer", body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << body.substr(0, 200);
    const json e = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(e.contains("error")) << r->body;
    EXPECT_NE(e["error"].get<std::string>().find(field), std::string::npos)
        << field << ": " << e["error"];
  }
  // Maps of images of different sizes do not fit one [N, H, W] tensor.
  json mixed = base64_request({images_[0], dir() / "wide.png"});
  mixed["outputs"] = {{{"name", "anomaly_map"}}};
  auto r = post_json(c, "/v2/models/a/infer", mixed);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  // ... but their scores do.
  mixed.erase("outputs");
  r = post_json(c, "/v2/models/a/infer", mixed);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  // A binary length running past the body.
  auto [body, n] = binary_request({images_[0]}, json::array());
  r = c.Post("/v2/models/a/infer", {{"Inference-Header-Content-Length", "999999"}}, body,
             "application/octet-stream");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
}

TEST_F(Serve, UnknownModelOrEndpointIs404) {
  auto c = client();
  auto r = post_json(c, "/v2/models/nope/infer", base64_request({images_[0]}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_NE(r->body.find("nope"), std::string::npos);
  for (const char* path : {"/v2/models/nope", "/v2/models/nope/ready", "/v2/nothing"}) {
    r = c.Get(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << path;
    EXPECT_TRUE(json::parse(r->body).contains("error")) << path;
  }
}

TEST_F(Serve, LimitsAre413BeforeDecoding) {
  Server limited(dir() / "models", dir() / "limited.log",
                 {"--max-body", "200000", "--max-pixels", "1000000"});
  ASSERT_GT(limited.port(), 0);
  auto c = limited.client();
  auto r = c.Post("/v2/models/a/infer", std::string(300000, ' '), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_NE(r->body.find("--max-body"), std::string::npos) << r->body;
  // A 4000 x 4000 PNG compresses to a few kB: its header alone must refuse it.
  const fs::path bomb = dir() / "bomb.png";
  cv::imwrite(bomb.string(), cv::Mat(4000, 4000, CV_8UC3, cv::Scalar(0, 0, 0)));
  ASSERT_LT(fs::file_size(bomb), 200000u);
  r = post_json(c, "/v2/models/a/infer", base64_request({bomb}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_NE(r->body.find("--max-pixels"), std::string::npos) << r->body;
  r = post_json(c, "/v2/models/a/infer", base64_request({images_[0]}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(Serve, FullQueueIs503) {
  Server busy(dir() / "models", dir() / "busy.log",
              {"--max-queue", "1", "--max-batch", "1", "--threads", "1"});
  ASSERT_GT(busy.port(), 0);
  const json req = base64_request(std::vector<fs::path>(16, images_[0]));  // a slow request
  std::vector<int> status(8, 0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < status.size(); ++i)
    threads.emplace_back([&, i] {
      auto c = busy.client();
      auto r = post_json(c, "/v2/models/a/infer", req);
      status[i] = r ? r->status : -1;
      if (r && r->status == 503) {
        EXPECT_NE(r->body.find("--max-queue"), std::string::npos);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_GT(std::count(status.begin(), status.end(), 503), 0);
  EXPECT_GT(std::count(status.begin(), status.end(), 200), 0);
  EXPECT_EQ(
      std::count(status.begin(), status.end(), 200) + std::count(status.begin(), status.end(), 503),
      8);
}

TEST_F(Serve, ApiKeyIs401WhenMissingOrWrong) {
  write_bytes(dir() / "key.txt", "s3cret-key\n");
  Server locked(dir() / "models", dir() / "locked.log",
                {"--api-key-file", (dir() / "key.txt").string()});
  ASSERT_GT(locked.port(), 0);
  auto c = locked.client();
  auto r = c.Get("/v2/models/a");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_TRUE(json::parse(r->body).contains("error"));
  r = c.Get("/v2/models/a", {{"Authorization", "Bearer s3cret-kez"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = c.Get("/metrics", {{"Authorization", "Bearer s3cret"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = c.Get("/v2/models/a", {{"Authorization", "Bearer s3cret-key"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Get("/v2/models/a", {{"X-API-Key", "s3cret-key"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Get("/v2/health/ready");  // probes stay open
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(Serve, RepositoryIndexLoadUnload) {
  auto c = client();
  auto index = [&] {
    auto r = c.Post("/v2/repository/index", "{}", "application/json");
    EXPECT_TRUE(r && r->status == 200);
    std::map<std::string, std::string> state;
    for (const json& e : json::parse(r->body)) state[e["name"]] = e["state"];
    return state;
  };
  EXPECT_EQ(index(), (std::map<std::string, std::string>{{"a", "READY"}, {"b", "READY"}}));
  auto r = c.Post("/v2/repository/models/b/unload", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(index()["b"], "UNAVAILABLE");
  r = post_json(c, "/v2/models/b/infer", base64_request({images_[0]}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  r = c.Post("/v2/repository/models/b/unload", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  r = c.Post("/v2/repository/models/b/load", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(index()["b"], "READY");
  r = post_json(c, "/v2/models/b/infer", base64_request({images_[0]}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  // A name is never a path.
  for (const char* bad : {"..", ".hidden", "a%2F..%2Fa", "a%20b"}) {
    r = c.Post((std::string("/v2/repository/models/") + bad + "/load").c_str(), "{}",
               "application/json");
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->status == 400 || r->status == 404) << bad << " " << r->status;
  }
  r = c.Post("/v2/repository/models/absent/load", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
}

// Requests keep flowing while the model they use is reloaded and unloaded: each is answered
// 200 with the right score (the request keeps its model) or 404 (the model was gone).
TEST_F(Serve, LoadAndUnloadDuringTraffic) {
  const double expected = cli_.at(images_[3].filename().string()).score;
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, missing{0}, other{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 3; ++t)
    clients.emplace_back([&] {
      auto c = client();
      const json req = base64_request({images_[3], images_[0]});
      while (!stop) {
        auto r = post_json(c, "/v2/models/b/infer", req);
        if (r && r->status == 200 &&
            std::abs(output(json::parse(r->body), "raw_score")["data"][0].get<double>() -
                     expected) < 1e-6)
          ++ok;
        else if (r && r->status == 404)
          ++missing;
        else
          ++other;
      }
    });
  auto c = client();
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(c.Post("/v2/repository/models/b/load", "{}", "application/json")->status, 200);
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    EXPECT_EQ(c.Post("/v2/repository/models/b/unload", "{}", "application/json")->status, 200);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(c.Post("/v2/repository/models/b/load", "{}", "application/json")->status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_GT(ok, 0);
  EXPECT_GT(missing, 0);
  EXPECT_EQ(other, 0);
}

TEST_F(Serve, SigtermAnswersRequestsInFlight) {
  Server doomed(dir() / "models", dir() / "doomed.log", {"--max-batch", "8"});
  ASSERT_GT(doomed.port(), 0);
  const json req = base64_request(std::vector<fs::path>(8, images_[1]));
  std::vector<int> status(6, 0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < status.size(); ++i)
    threads.emplace_back([&, i] {
      auto c = doomed.client();
      auto r = post_json(c, "/v2/models/a/infer", req);
      status[i] = r ? r->status : -1;
    });
  // Wait until the server has all six (being handled, or already answered), then stop it.
  auto c = doomed.client();
  int in_flight = 0;
  for (int i = 0; i < 3000; ++i) {
    auto m = c.Get("/metrics");
    if (!m) continue;
    in_flight = metric(m->body, "patchcore_requests_in_flight");
    const int answered = metric(m->body, "patchcore_requests_total{model=\"a\",code=\"200\"}");
    if (in_flight + std::max(answered, 0) >= 6) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(in_flight, 1);  // the stop finds work in flight
  EXPECT_EQ(doomed.stop(), 0) << read_bytes(dir() / "doomed.log");
  for (auto& t : threads) t.join();
  for (int s : status) EXPECT_EQ(s, 200);
  // Stopped: nothing listens any more.
  EXPECT_FALSE(doomed.client().Get("/v2/health/live"));
}

TEST_F(Serve, AccessLogIsOneJsonLinePerRequest) {
  Server logged(dir() / "models", dir() / "access.log");
  ASSERT_GT(logged.port(), 0);
  auto c = logged.client();
  ASSERT_TRUE(c.Get("/v2/models/a"));
  ASSERT_TRUE(c.Get("/v2/models/zzz"));
  EXPECT_EQ(logged.stop(), 0);
  std::istringstream in(read_bytes(dir() / "access.log"));
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.contains("status")) lines.push_back(j);
  }
  ASSERT_EQ(lines.size(), 2u);
  // Each request on its own connection and thread: the lines may come in either order.
  if (lines[0]["status"] != 200) std::swap(lines[0], lines[1]);
  EXPECT_EQ(lines[0]["path"], "/v2/models/a");
  EXPECT_EQ(lines[0]["status"], 200);
  EXPECT_EQ(lines[0]["model"], "a");
  EXPECT_EQ(lines[1]["path"], "/v2/models/zzz");
  EXPECT_EQ(lines[1]["status"], 404);
  EXPECT_GT(lines[1]["seconds"].get<double>(), 0.0);
}

}  // namespace
