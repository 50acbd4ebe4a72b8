#include "repository.h"

#include <set>

#include "http_error.h"

namespace fs = std::filesystem;

namespace patchcore::serve {
namespace {

constexpr const char* kExtension = ".patchcore";

std::vector<std::string> model_files(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == kExtension && e.is_regular_file(ec) &&
        Repository::valid_name(e.path().stem().string()))
      names.push_back(e.path().stem().string());
  }
  return names;
}

}  // namespace

Repository::Repository(fs::path dir, int threads, BackboneEngine engine, Precision precision)
    : dir_(std::move(dir)), threads_(threads), engine_(engine), precision_(precision) {}

bool Repository::valid_name(const std::string& name) {
  if (name.empty() || name.size() > 200 || name[0] == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

fs::path Repository::file_of(const std::string& name) const { return dir_ / (name + kExtension); }

std::shared_ptr<const Model> Repository::read(const fs::path& file,
                                              const Callbacks& callbacks) const {
  Model model = Model::load(file, callbacks);
  model.set_threads(threads_);
  model.set_engine(engine_);
  model.set_precision(precision_);
  return std::make_shared<const Model>(std::move(model));
}

void Repository::load_all(const Callbacks& callbacks) {
  if (!fs::is_directory(dir_))
    throw Error(ErrorKind::bad_input, dir_.string() + ": no such folder of models");
  for (const std::string& name : model_files(dir_)) {
    auto model = read(file_of(name), callbacks);
    std::lock_guard lock(mutex_);
    models_[name] = std::move(model);
  }
}

std::shared_ptr<const Model> Repository::get(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = models_.find(name);
  return it == models_.end() ? nullptr : it->second;
}

std::vector<Repository::Entry> Repository::index() const {
  std::set<std::string> names;
  for (const std::string& n : model_files(dir_)) names.insert(n);
  std::lock_guard lock(mutex_);
  for (const auto& [n, m] : models_) names.insert(n);
  std::vector<Entry> out;
  for (const std::string& n : names) out.push_back({n, models_.count(n) > 0});
  return out;
}

void Repository::load(const std::string& name, const Callbacks& callbacks) {
  if (!valid_name(name)) throw HttpError(400, "model name '" + name + "' is not a plain name");
  const fs::path file = file_of(name);
  std::error_code ec;
  if (!fs::is_regular_file(file, ec))
    throw HttpError(404, "no model '" + name + "' in the model folder");
  auto model = read(file, callbacks);  // outside the lock: requests go on meanwhile
  std::lock_guard lock(mutex_);
  models_[name] = std::move(model);
}

void Repository::unload(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (models_.erase(name) == 0) throw HttpError(404, "model '" + name + "' is not loaded");
}

}  // namespace patchcore::serve
