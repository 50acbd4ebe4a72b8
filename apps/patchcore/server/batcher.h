// Dynamic batching: inference requests for the same model that arrive together run as one
// engine call (one pre-processing and backbone call per batch instead of one per request).
// One worker runs the engine; while other requests are still being received and decoded it
// waits for them, at most max_wait, before it starts a batch that is not full.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "patchcore/patchcore.h"
#include "server_metrics.h"

namespace patchcore::serve {

class Batcher {
 public:
  struct Options {
    int max_batch = 8;  ///< images per engine call (a larger request runs alone, whole)
    std::chrono::microseconds max_wait{2000};
    size_t max_queue = 64;  ///< requests waiting; beyond, run() refuses (HttpError 503)
  };
  Batcher(Options options, Metrics& metrics);
  /// Runs what is queued, then stops the worker.
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  /// Predicts the images with `model`, batched with other requests; blocks until done. Throws
  /// HttpError 503 when max_queue requests already wait, or what the engine threw for them.
  std::vector<Prediction> run(std::shared_ptr<const Model> model,
                              const std::vector<ImageView>& images);

  /// Marks a request as arriving (being received or decoded) for its lifetime, so that the
  /// worker waits for it.
  class Arrival {
   public:
    explicit Arrival(Batcher& b);
    ~Arrival();
    Arrival(const Arrival&) = delete;
    Arrival& operator=(const Arrival&) = delete;

   private:
    Batcher& b_;
  };

  size_t queue_depth() const;

 private:
  struct Job {
    std::shared_ptr<const Model> model;
    const std::vector<ImageView>* images;
    std::promise<std::vector<Prediction>> done;
  };
  void work();
  std::vector<Job> take_batch(std::unique_lock<std::mutex>& lock);
  size_t gather(std::vector<Job>& batch, size_t images);
  void execute(std::vector<Job>& batch);

  Options options_;
  Metrics& metrics_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Job> queue_;
  int arriving_ = 0;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace patchcore::serve
