#include "batcher.h"

#include "http_error.h"

namespace patchcore::serve {

Batcher::Batcher(Options options, Metrics& metrics)
    : options_(options), metrics_(metrics), worker_([this] { work(); }) {}

Batcher::~Batcher() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

Batcher::Arrival::Arrival(Batcher& b) : b_(b) {
  std::lock_guard lock(b_.mutex_);
  ++b_.arriving_;
}

Batcher::Arrival::~Arrival() {
  {
    std::lock_guard lock(b_.mutex_);
    --b_.arriving_;
  }
  b_.changed_.notify_all();
}

size_t Batcher::queue_depth() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

std::vector<Prediction> Batcher::run(std::shared_ptr<const Model> model,
                                     const std::vector<ImageView>& images) {
  std::future<std::vector<Prediction>> result;
  {
    std::lock_guard lock(mutex_);
    if (queue_.size() >= options_.max_queue)
      throw HttpError(503, "the server is busy: " + std::to_string(queue_.size()) +
                               " requests wait (--max-queue); retry later");
    queue_.push_back(Job{std::move(model), &images, {}});
    result = queue_.back().done.get_future();
  }
  changed_.notify_all();
  return result.get();
}

// Moves the queued jobs for the first job's model into `batch` while the batch has room;
// returns the batch's image count.
size_t Batcher::gather(std::vector<Job>& batch, size_t images) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    const size_t n = it->images->size();
    if (it->model != batch.front().model || images + n > size_t(options_.max_batch)) {
      ++it;
      continue;
    }
    images += n;
    batch.push_back(std::move(*it));
    it = queue_.erase(it);
  }
  return images;
}

std::vector<Batcher::Job> Batcher::take_batch(std::unique_lock<std::mutex>& lock) {
  std::vector<Job> batch;
  batch.push_back(std::move(queue_.front()));
  queue_.pop_front();
  size_t images = gather(batch, batch.front().images->size());
  const auto deadline = std::chrono::steady_clock::now() + options_.max_wait;
  // Wait only for requests already on their way: a lone request starts at once.
  while (images < size_t(options_.max_batch) && arriving_ > 0 && !stopping_) {
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout) break;
    images = gather(batch, images);
  }
  return batch;
}

void Batcher::work() {
  std::unique_lock lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    std::vector<Job> batch = take_batch(lock);
    lock.unlock();
    execute(batch);
    lock.lock();
  }
}

void Batcher::execute(std::vector<Job>& batch) {
  std::vector<ImageView> views;
  for (const Job& j : batch) views.insert(views.end(), j.images->begin(), j.images->end());
  metrics_.observe_batch(static_cast<int64_t>(batch.size()), static_cast<int64_t>(views.size()));
  Callbacks cb;
  cb.timing = [this](const std::string& stage, double s, int64_t n) {
    metrics_.add_stage(stage, s, n);
  };
  try {
    std::vector<Prediction> all = batch.front().model->predict(views, cb);
    if (all.size() != views.size()) throw std::logic_error("predict returned fewer results");
    size_t at = 0;
    for (Job& j : batch) {
      const size_t n = j.images->size();
      j.done.set_value(std::vector<Prediction>(all.begin() + at, all.begin() + at + n));
      at += n;
    }
  } catch (...) {
    if (batch.size() == 1) {
      batch.front().done.set_exception(std::current_exception());
      return;
    }
    // One request's images failed the batch: run each alone so the error reaches only it.
    for (Job& j : batch) {
      try {
        j.done.set_value(j.model->predict(*j.images, cb));
      } catch (...) {
        j.done.set_exception(std::current_exception());
      }
    }
  }
}

}  // namespace patchcore::serve
