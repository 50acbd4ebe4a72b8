// The model repository: every *.patchcore in one folder, served under its file stem. Models
// are shared read-only (shared_ptr<const Model>): a request holds its model until it is
// answered, so a model reloaded or unloaded meanwhile finishes the requests that use it.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "patchcore/patchcore.h"

namespace patchcore::serve {

class Repository {
 public:
  /// Serves the folder `dir`; loaded models predict on `threads` threads (0: all cores), with
  /// the backbone on `engine` in `precision`.
  Repository(std::filesystem::path dir, int threads, BackboneEngine engine = Params{}.engine,
             Precision precision = Params{}.precision);

  /// Loads every model of the folder. Throws Error(bad_input) naming the folder when it is
  /// missing, or a file that cannot be loaded.
  void load_all(const Callbacks& callbacks);
  /// The loaded model `name`, or nullptr.
  std::shared_ptr<const Model> get(const std::string& name) const;

  struct Entry {
    std::string name;
    bool loaded = false;
  };
  /// The models of the folder and the loaded ones, by name.
  std::vector<Entry> index() const;
  /// (Re)loads `name` from the folder, replacing the loaded one once the file is read. Throws
  /// HttpError 400 for a name that is not a plain model name, 404 when no such file exists;
  /// Error(bad_input) for a file that cannot be loaded.
  void load(const std::string& name, const Callbacks& callbacks);
  /// Throws HttpError 404 when `name` is not loaded.
  void unload(const std::string& name);

  /// Letters, digits, '_', '-' and '.' not first: a name can never reach outside the folder.
  static bool valid_name(const std::string& name);

 private:
  std::filesystem::path file_of(const std::string& name) const;
  std::shared_ptr<const Model> read(const std::filesystem::path& file,
                                    const Callbacks& callbacks) const;

  std::filesystem::path dir_;
  int threads_;
  BackboneEngine engine_;
  Precision precision_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const Model>> models_;
};

}  // namespace patchcore::serve
