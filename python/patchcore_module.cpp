// _patchcore: the C++ engine for Python (package python/patchcore, docs/python.md). Compiles
// against include/patchcore/patchcore.h only. The GIL is released while the library works; its
// callbacks take the GIL back to report progress and log lines, and to look for Ctrl-C.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <variant>

#include "patchcore/patchcore.h"

namespace py = pybind11;
namespace fs = std::filesystem;
using namespace patchcore;

namespace {

// Live C++ objects owned by Python, for the tests' check that nothing leaks.
std::atomic<int64_t> g_live_models{0};
std::atomic<int64_t> g_live_arrays{0};

// ---------------------------------------------------------------------------------- errors

[[noreturn]] void raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

[[noreturn]] void raise_file_not_found(const std::string& what, const fs::path& path) {
  py::object e = py::reinterpret_borrow<py::object>(PyExc_FileNotFoundError)(
      ENOENT, what + ": no such file or folder", path.string());
  PyErr_SetObject(PyExc_FileNotFoundError, e.ptr());
  throw py::error_already_set();
}

// Thrown through the library by a callback that holds a Python exception (Ctrl-C, an error in
// the user's progress callable); the binding raises that exception once the library returned.
struct CallbackAbort {};

// ---------------------------------------------------------------------------------- arrays

// A NumPy array that owns `values` (moved, not copied): the capsule frees them with the array.
template <class T>
py::array owned_array(std::vector<T>&& values, std::vector<py::ssize_t> shape) {
  auto* v = new std::vector<T>(std::move(values));
  py::capsule owner(v, [](void* p) {
    delete static_cast<std::vector<T>*>(p);
    --g_live_arrays;
  });
  ++g_live_arrays;
  std::vector<py::ssize_t> strides(shape.size(), sizeof(T));
  for (size_t i = shape.size() - 1; i > 0; --i) strides[i - 1] = strides[i] * shape[i];
  return py::array_t<T>(shape, strides, v->data(), owner);
}

py::array image_array(Image&& image) {
  return owned_array(std::move(image.pixels), {image.height, image.width, 3});
}

// A view of a uint8 H x W (grey) or H x W x C (C = 1, 3, 4) array. Rows may be any distance
// apart (a crop of a larger array is not copied); other layouts are copied into `keep`, which
// also holds every array the views point into while the GIL is released.
ImageView view_of(py::handle obj, const std::string& name, std::vector<py::array>& keep) {
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (a.dtype().kind() != 'u' || a.itemsize() != 1)
    raise(PyExc_ValueError, name + ": dtype " + py::str(a.dtype()).cast<std::string>() +
                                ", expected uint8 (0-255) pixels");
  int channels = 0;
  if (a.ndim() == 2) channels = 1;
  if (a.ndim() == 3 && (a.shape(2) == 1 || a.shape(2) == 3 || a.shape(2) == 4))
    channels = static_cast<int>(a.shape(2));
  if (channels == 0) {
    std::string dims;
    for (py::ssize_t i = 0; i < a.ndim(); ++i)
      dims += (i ? " x " : "") + std::to_string(a.shape(i));
    raise(PyExc_ValueError, name + ": shape " + (dims.empty() ? "()" : dims) +
                                ", expected H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA)");
  }
  if (a.shape(0) < 1 || a.shape(1) < 1)
    raise(PyExc_ValueError, name + ": empty image (" + std::to_string(a.shape(0)) + " x " +
                                std::to_string(a.shape(1)) + ")");
  const py::ssize_t row = a.strides(0);
  const bool packed_pixels =
      a.strides(1) == channels && (a.ndim() == 2 || a.strides(2) == 1 || channels == 1);
  if (!packed_pixels || row < a.shape(1) * channels)
    a = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(a);
  keep.push_back(a);
  ImageView v;
  v.data = static_cast<const uint8_t*>(a.data());
  v.height = static_cast<int>(a.shape(0));
  v.width = static_cast<int>(a.shape(1));
  v.channels = channels;
  v.stride = a.strides(0);
  v.name = name;
  return v;
}

// ---------------------------------------------------------------------------------- inputs

bool is_path(py::handle obj) {
  return py::isinstance<py::str>(obj) || py::hasattr(obj, "__fspath__");
}

fs::path to_path(py::handle obj) {
  return fs::path(py::str(py::module_::import("os").attr("fspath")(obj)).cast<std::string>());
}

// What the caller passed as images: files (possibly from a folder) and/or arrays.
struct Inputs {
  std::vector<std::variant<fs::path, ImageView>> items;
  std::vector<py::array> keep;  // the arrays the views point into
  std::vector<Image> decoded;   // files decoded when mixed with arrays
  bool single = false;          // one path or one array: the caller wants one result

  bool all_paths() const {
    return std::all_of(items.begin(), items.end(),
                       [](const auto& i) { return std::holds_alternative<fs::path>(i); });
  }
  std::vector<fs::path> paths() const {
    std::vector<fs::path> out;
    for (const auto& i : items) out.push_back(std::get<fs::path>(i));
    return out;
  }
  // Views of every item; files are decoded here (call without the GIL).
  std::vector<ImageView> views() {
    std::vector<ImageView> out;
    decoded.reserve(items.size());
    for (const auto& i : items) {
      if (const auto* p = std::get_if<fs::path>(&i)) {
        decoded.push_back(load_image(*p));
        out.push_back(decoded.back().view());
      } else {
        out.push_back(std::get<ImageView>(i));
      }
    }
    return out;
  }
};

Inputs collect(py::handle images, const char* what, bool training) {
  Inputs in;
  const std::string name = what;
  if (is_path(images)) {
    const fs::path p = to_path(images);
    if (!fs::exists(p)) raise_file_not_found(name, p);
    if (fs::is_directory(p)) {
      if (training) {
        for (const Sample& x : scan_dataset(p).train) in.items.emplace_back(x.image);
      } else {
        for (const fs::path& f : list_images(p)) in.items.emplace_back(f);
      }
      if (in.items.empty()) raise(PyExc_ValueError, name + ": no images in folder " + p.string());
    } else {
      in.items.emplace_back(p);
      in.single = true;
    }
    return in;
  }
  if (py::isinstance<py::array>(images)) {
    in.items.emplace_back(view_of(images, "image", in.keep));
    in.single = true;
    return in;
  }
  if (!py::isinstance<py::sequence>(images) || py::isinstance<py::bytes>(images))
    raise(PyExc_TypeError,
          name + ": expected a path, a folder, a NumPy array or a list of them, got " +
              py::str(py::type::of(images).attr("__name__")).cast<std::string>());
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(images);
  if (seq.size() == 0) raise(PyExc_ValueError, name + ": empty list");
  for (size_t i = 0; i < seq.size(); ++i) {
    const py::object item = seq[i];
    const std::string item_name = name + "[" + std::to_string(i) + "]";
    if (is_path(item)) {
      const fs::path p = to_path(item);
      if (!fs::exists(p)) raise_file_not_found(item_name, p);
      if (fs::is_directory(p))
        raise(PyExc_ValueError, item_name + ": " + p.string() +
                                    " is a folder; pass a folder on its own, not in a list");
      in.items.emplace_back(p);
    } else if (py::isinstance<py::array>(item)) {
      in.items.emplace_back(view_of(item, item_name, in.keep));
    } else {
      raise(PyExc_TypeError, item_name + ": expected a path or a NumPy array, got " +
                                 py::str(py::type::of(item).attr("__name__")).cast<std::string>());
    }
  }
  return in;
}

// ---------------------------------------------------------------------------------- params

// Every field of Params under its library name, in declaration order.
template <class P, class F>
void visit_params(P& p, F&& f) {
  f("preset", p.preset);
  f("backbone", p.backbone);
  f("layers", p.layers);
  f("normalization", p.normalization);
  f("image_size", p.image_size);
  f("resize", p.resize);
  f("resize_scale", p.resize_scale);
  f("intensity", p.intensity);
  f("crop", p.crop);
  f("embedding", p.embedding);
  f("patch_size", p.patch_size);
  f("pretrain_dim", p.pretrain_dim);
  f("target_dim", p.target_dim);
  f("coreset_ratio", p.coreset_ratio);
  f("coreset_min", p.coreset_min);
  f("coreset_dim", p.coreset_dim);
  f("seed", p.seed);
  f("k", p.k);
  f("squared_l2", p.squared_l2);
  f("reweight", p.reweight);
  f("reweight_b", p.reweight_b);
  f("upsample", p.upsample);
  f("blur_sigma", p.blur_sigma);
  f("blur_reflect101", p.blur_reflect101);
  f("holdout_fraction", p.holdout_fraction);
  f("threads", p.threads);
  f("batch_size", p.batch_size);
  f("engine", p.engine);
  f("precision", p.precision);
}

template <class T>
py::object to_py(const T& v) {
  if constexpr (std::is_enum_v<T>)
    return py::str(to_string(v));
  else
    return py::cast(v);
}

py::dict params_dict(const Params& p) {
  py::dict d;
  visit_params(p, [&](const char* name, const auto& v) { d[name] = to_py(v); });
  return d;
}

std::string type_name(py::handle v) {
  return py::str(py::type::of(v).attr("__name__")).cast<std::string>();
}

[[noreturn]] void wrong_type(const std::string& name, const char* expected, py::handle v) {
  raise(PyExc_TypeError, name + ": expected " + expected + ", got " + type_name(v) + " " +
                             py::repr(v).cast<std::string>());
}

void from_py(const std::string& name, py::handle v, std::string& out) {
  if (!py::isinstance<py::str>(v) && !py::hasattr(v, "__fspath__")) wrong_type(name, "a string", v);
  out = py::isinstance<py::str>(v) ? v.cast<std::string>() : to_path(v).string();
}
void from_py(const std::string& name, py::handle v, std::vector<std::string>& out) {
  if (py::isinstance<py::str>(v) || !py::isinstance<py::sequence>(v))
    wrong_type(name, "a list of layer names", v);
  out.clear();
  for (py::handle item : v) {
    if (!py::isinstance<py::str>(item)) wrong_type(name, "a list of layer names", v);
    out.push_back(item.cast<std::string>());
  }
}
void from_py(const std::string& name, py::handle v, bool& out) {
  if (!PyBool_Check(v.ptr()) && type_name(v) != "bool_") wrong_type(name, "True or False", v);
  out = PyObject_IsTrue(v.ptr()) == 1;
}
template <class T>
requires std::is_integral_v<T>
void from_py(const std::string& name, py::handle v, T& out) {
  if (PyBool_Check(v.ptr()) || !PyIndex_Check(v.ptr())) wrong_type(name, "an integer", v);
  const py::int_ i = py::reinterpret_steal<py::int_>(PyNumber_Index(v.ptr()));
  const bool negative = i < py::int_(0);
  if ((negative && std::is_unsigned_v<T>) || i > py::int_(std::numeric_limits<T>::max()) ||
      (std::is_signed_v<T> && i < py::int_(std::numeric_limits<T>::min())))
    raise(PyExc_ValueError, name + ": " + py::repr(v).cast<std::string>() + " is out of range");
  out = i.cast<T>();
}
void from_py(const std::string& name, py::handle v, double& out) {
  if (PyBool_Check(v.ptr()) || py::isinstance<py::str>(v) ||
      !(PyFloat_Check(v.ptr()) || PyIndex_Check(v.ptr()) || py::hasattr(v, "__float__")))
    wrong_type(name, "a number", v);
  out = PyFloat_AsDouble(v.ptr());
  if (PyErr_Occurred()) throw py::error_already_set();
}
void parse(const std::string& s, Resize& v) { v = resize_from_string(s); }
void parse(const std::string& s, Intensity& v) { v = intensity_from_string(s); }
void parse(const std::string& s, EmbeddingMode& v) { v = embedding_from_string(s); }
void parse(const std::string& s, Upsample& v) { v = upsample_from_string(s); }
void parse(const std::string& s, BackboneEngine& v) { v = engine_from_string(s); }
void parse(const std::string& s, Precision& v) { v = precision_from_string(s); }

template <class E>
requires std::is_enum_v<E>
void from_py(const std::string& name, py::handle v, E& out) {
  if (!py::isinstance<py::str>(v)) wrong_type(name, "a string", v);
  parse(v.cast<std::string>(), out);
}

// The preset's values, then every entry of `given` (keyword -> value) on top, as the CLI does.
Params params_from(const std::string& preset, const py::dict& given) {
  Params p = preset_params(preset);
  std::vector<std::string> known;
  visit_params(p, [&](const char* name, auto&) { known.emplace_back(name); });
  for (const auto& [key, value] : given) {
    const std::string name = py::str(key).cast<std::string>();
    if (name == "preset" || name == "resize_scale" ||
        std::find(known.begin(), known.end(), name) == known.end())
      raise(PyExc_TypeError, "fit() got an unexpected keyword argument '" + name + "'" +
                                 (name == "resize_scale" ? " (fit finds it from the images)" : ""));
  }
  visit_params(p, [&](const char* name, auto& field) {
    if (given.contains(name)) from_py(name, given[name], field);
  });
  return p;
}

// ---------------------------------------------------------------------------------- callbacks

// The library's callbacks for one call from Python: log lines to logging.getLogger("patchcore"),
// progress to the user's callable, and a look for Ctrl-C at each. A Python exception raised in
// any of them is kept and aborts the library call (CallbackAbort); raise_pending() re-raises it.
class PythonCallbacks {
 public:
  explicit PythonCallbacks(py::object progress)
      : progress_(std::move(progress)),
        logger_(py::module_::import("logging").attr("getLogger")("patchcore")) {}

  Callbacks callbacks() {
    Callbacks cb;
    cb.log = [this](LogLevel level, const std::string& message) {
      with_python([&] {
        if (level == LogLevel::warning) warnings_.push_back(message);
        static constexpr int kLevels[] = {10, 20, 30, 40};  // logging.DEBUG .. ERROR
        logger_.attr("log")(kLevels[static_cast<int>(level)], message);
      });
    };
    cb.progress = [this](const std::string& stage, int64_t done, int64_t total) {
      with_python([&] {
        if (!progress_.is_none()) progress_(stage, done, total);
      });
    };
    return cb;
  }

  // Warnings logged during the call (skipped images).
  const std::vector<std::string>& warnings() const { return warnings_; }

  // Call with the GIL held.
  void raise_pending() {
    if (error_) {
      py::error_already_set e = *error_;
      error_.reset();
      throw e;
    }
  }

 private:
  template <class F>
  void with_python(F&& f) {
    py::gil_scoped_acquire gil;
    if (error_) throw CallbackAbort{};
    try {
      f();
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    } catch (py::error_already_set& e) {
      error_ = e;
      throw CallbackAbort{};
    }
  }

  py::object progress_;
  py::object logger_;
  std::optional<py::error_already_set> error_;
  std::vector<std::string> warnings_;
};

// Runs f() without the GIL; a Python exception from a callback is raised afterwards.
template <class F>
auto run_released(PythonCallbacks& pcb, F&& f) {
  using R = decltype(f());
  std::optional<R> result;
  {
    py::gil_scoped_release release;
    try {
      result.emplace(f());
    } catch (const CallbackAbort&) {
    }
  }
  pcb.raise_pending();
  if (!result) raise(PyExc_RuntimeError, "patchcore: a callback stopped the call without an error");
  return std::move(*result);
}

// ---------------------------------------------------------------------------------- model

struct PyModel {
  Model model;
  // Predictions share the model; changing its calibration, threads or engine waits for them.
  mutable std::shared_mutex mutex;

  explicit PyModel(Model&& m) : model(std::move(m)) { ++g_live_models; }
  ~PyModel() { --g_live_models; }
};

struct PyPrediction {
  std::string path;
  double score = 0;
  double normalized_score = 0;
  bool anomalous = false;
  double threshold = 0;
  double pixel_threshold = 0;
  py::array anomaly_map;  // float32, the image's size
  py::array mask;         // bool, anomaly_map >= pixel_threshold
};

// The predictions with their maps at the image's size (computed without the GIL).
struct Scored {
  std::vector<Prediction> predictions;
  std::vector<AnomalyMap> maps;
  Calibration calibration;
};

PyPrediction to_python(const Prediction& p, AnomalyMap&& map, const Calibration& c) {
  PyPrediction out;
  out.path = p.path.string();
  out.score = p.score;
  out.normalized_score = p.normalized_score;
  out.anomalous = p.anomalous;
  out.threshold = c.image_threshold;
  out.pixel_threshold = c.pixel_threshold;
  std::vector<uint8_t> mask(map.values.size());
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = map.values[i] >= c.pixel_threshold;
  out.anomaly_map = owned_array(std::move(map.values), {map.height, map.width});
  out.mask = owned_array(std::move(mask), {map.height, map.width}).attr("view")("bool");
  return out;
}

py::object predict(const PyModel& self, py::handle x, py::object progress, bool skip_unreadable) {
  Inputs in = collect(x, "images", false);
  PythonCallbacks pcb(std::move(progress));
  const Callbacks cb = pcb.callbacks();
  Scored s = run_released(pcb, [&] {
    std::shared_lock lock(self.mutex);
    Scored r;
    r.calibration = self.model.calibration();
    if (in.all_paths()) {
      const std::vector<fs::path> paths = in.paths();
      if (in.single)
        r.predictions.push_back(self.model.predict(paths.front()));
      else
        r.predictions = self.model.predict(paths, cb);
    } else {
      r.predictions = self.model.predict(in.views(), cb);
    }
    for (const Prediction& p : r.predictions) r.maps.push_back(self.model.image_map(p));
    return r;
  });
  if (!skip_unreadable && s.predictions.size() < in.items.size()) {
    std::string why =
        pcb.warnings().empty() ? "an image could not be read" : pcb.warnings().front();
    if (why.starts_with("skipped ")) why = why.substr(8);
    raise(PyExc_ValueError, why);
  }
  std::vector<PyPrediction> out;
  for (size_t i = 0; i < s.predictions.size(); ++i)
    out.push_back(to_python(s.predictions[i], std::move(s.maps[i]), s.calibration));
  if (in.single) return py::cast(std::move(out.front()));
  return py::cast(std::move(out));
}

std::unique_ptr<PyModel> fit(py::handle images, const std::string& preset, const py::dict& params,
                             py::object progress) {
  const Params p = params_from(preset, params);
  Inputs in = collect(images, "images", true);
  PythonCallbacks pcb(std::move(progress));
  const Callbacks cb = pcb.callbacks();
  Model m = run_released(pcb, [&] {
    if (in.all_paths()) return Model::fit(in.paths(), p, cb);
    return Model::fit(in.views(), p, cb);
  });
  return std::make_unique<PyModel>(std::move(m));
}

// The metrics `patchcore eval` writes to metrics.json, as a dict; the files too when out is set.
py::object evaluate_folder(const PyModel& self, py::handle data, py::handle out, bool write_images,
                           py::object progress) {
  if (!is_path(data)) wrong_type("data", "a path", data);
  const fs::path folder = to_path(data);
  if (!fs::exists(folder)) raise_file_not_found("data", folder);
  EvalOptions o;
  if (!out.is_none()) o.out_dir = to_path(out);
  o.write_images = write_images;
  PythonCallbacks pcb(std::move(progress));
  const Callbacks cb = pcb.callbacks();
  const std::string metrics = run_released(pcb, [&] {
    std::shared_lock lock(self.mutex);
    return evaluate(self.model, folder, o, cb).metrics_json;
  });
  return py::module_::import("json").attr("loads")(metrics);
}

std::unique_ptr<PyModel> load(py::handle file) {
  if (!is_path(file)) wrong_type("load", "a path", file);
  const fs::path path = to_path(file);
  if (!fs::exists(path)) raise_file_not_found("model", path);
  PythonCallbacks pcb{py::object(py::none())};
  const Callbacks cb = pcb.callbacks();
  Model m = run_released(pcb, [&] { return Model::load(path, cb); });
  return std::make_unique<PyModel>(std::move(m));
}

// A copy of what f reads from the model, taken while no setter runs (without the GIL, so that
// predictions in flight can still report progress).
template <class F>
auto read(const PyModel& self, F&& f) {
  py::gil_scoped_release release;
  std::shared_lock lock(self.mutex);
  return f(self.model);
}

py::dict calibration_dict(const Calibration& c) {
  py::dict d;
  d["image_threshold"] = c.image_threshold;
  d["pixel_threshold"] = c.pixel_threshold;
  d["min_score"] = c.min_score;
  d["max_score"] = c.max_score;
  d["source"] = c.source;
  return d;
}

// Moves the image threshold to t and the pixel threshold by as much, as `predict --threshold`.
void set_threshold(PyModel& self, double t) {
  if (!std::isfinite(t)) raise(PyExc_ValueError, "threshold: must be a finite number");
  py::gil_scoped_release release;
  std::unique_lock lock(self.mutex);
  Calibration c = self.model.calibration();
  c.pixel_threshold += t - c.image_threshold;
  c.image_threshold = t;
  c.source = "user";
  self.model.set_calibration(c);
}

void translate_errors(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const Error& e) {
    PyErr_SetString(e.kind() == ErrorKind::internal ? PyExc_RuntimeError : PyExc_ValueError,
                    e.what());
  }
}

}  // namespace

PYBIND11_MODULE(_patchcore, m) {
  m.doc() = "PatchCore anomaly detection, the C++ engine (use the package `patchcore`).";
  py::register_exception_translator(&translate_errors);

  py::class_<PyPrediction>(m, "Prediction", "The score and the heatmap of one image.")
      .def_readonly("path", &PyPrediction::path, "the file, or the array's name (images[3])")
      .def_readonly("score", &PyPrediction::score, "raw image score (model-specific scale)")
      .def_readonly("normalized_score", &PyPrediction::normalized_score,
                    "in [0, 1]; the threshold maps to 0.5")
      .def_readonly("anomalous", &PyPrediction::anomalous, "score >= threshold")
      .def_property_readonly(
          "label", [](const PyPrediction& p) { return p.anomalous ? "anomalous" : "normal"; })
      .def_readonly("threshold", &PyPrediction::threshold, "the image threshold used")
      .def_readonly("pixel_threshold", &PyPrediction::pixel_threshold,
                    "the pixel threshold the mask used")
      .def_readonly("anomaly_map", &PyPrediction::anomaly_map,
                    "float32 H x W pixel scores at the image's size")
      .def_readonly("mask", &PyPrediction::mask, "bool H x W: anomaly_map >= pixel_threshold")
      .def("__repr__", [](const PyPrediction& p) {
        return "Prediction(path=" + py::repr(py::str(p.path)).cast<std::string>() +
               ", score=" + py::repr(py::float_(p.score)).cast<std::string>() +
               ", normalized_score=" +
               py::repr(py::float_(p.normalized_score)).cast<std::string>() + ", label='" +
               (p.anomalous ? "anomalous" : "normal") + "')";
      });

  py::class_<PyModel>(m, "Model", "A fitted PatchCore model (patchcore.fit or patchcore.load).")
      .def("predict", &predict, py::arg("images"), py::arg("progress") = py::none(),
           py::arg("skip_unreadable") = false,
           "Scores a path, a uint8 array, a folder or a list of them: one Prediction for one "
           "image, a list otherwise (batched over every core).")
      .def(
          "save",
          [](const PyModel& self, py::handle file) {
            if (!is_path(file)) wrong_type("save", "a path", file);
            const fs::path path = to_path(file);
            py::gil_scoped_release release;
            std::shared_lock lock(self.mutex);
            self.model.save(path);
          },
          py::arg("path"), "Writes the model atomically (a temporary file, then a rename).")
      .def_property_readonly("info",
                             [](const PyModel& self) {
                               return py::module_::import("json").attr("loads")(
                                   read(self, [](const Model& m) { return m.info_json(); }));
                             })
      .def_property_readonly(
          "params",
          [](const PyModel& self) {
            return params_dict(read(self, [](const Model& m) { return m.params(); }));
          })
      .def_property_readonly(
          "calibration",
          [](const PyModel& self) {
            return calibration_dict(read(self, [](const Model& m) { return m.calibration(); }));
          })
      .def_property(
          "threshold",
          [](const PyModel& self) {
            return read(self, [](const Model& m) { return m.calibration().image_threshold; });
          },
          &set_threshold, "image score threshold; setting it moves the pixel threshold by as much")
      .def_property_readonly("map_size", [](const PyModel& self) { return self.model.map_size(); })
      .def_property(
          "engine",
          [](const PyModel& self) {
            return read(self, [](const Model& m) { return m.backbone_engine(); });
          },
          [](PyModel& self, const std::string& name) {
            const BackboneEngine e = engine_from_string(name);
            py::gil_scoped_release release;
            std::unique_lock lock(self.mutex);
            self.model.set_engine(e);
          },
          "what runs the backbone: auto, dnnl or opencv (gives the one that runs)")
      .def_property(
          "precision",
          [](const PyModel& self) {
            return read(self, [](const Model& m) { return m.backbone_precision(); });
          },
          [](PyModel& self, const std::string& name) {
            const Precision p = precision_from_string(name);
            py::gil_scoped_release release;
            std::unique_lock lock(self.mutex);
            self.model.set_precision(p);
          },
          "the backbone's arithmetic: auto, fp32 or bf16 (gives the one that runs)")
      .def(
          "set_threads",
          [](PyModel& self, int threads) {
            py::gil_scoped_release release;
            std::unique_lock lock(self.mutex);
            self.model.set_threads(threads);
          },
          py::arg("threads"), "threads for later predictions (0: all cores)")
      .def("__repr__", [](const PyModel& self) {
        const auto [backbone, threshold] = read(self, [](const Model& m) {
          return std::pair(m.params().backbone, m.calibration().image_threshold);
        });
        return "<patchcore.Model backbone=" + backbone +
               " threshold=" + py::repr(py::float_(threshold)).cast<std::string>() + ">";
      });

  m.def("_fit", &fit, py::arg("images"), py::arg("preset"), py::arg("params"), py::arg("progress"));
  m.def("_evaluate", &evaluate_folder, py::arg("model"), py::arg("data"), py::arg("out"),
        py::arg("write_images"), py::arg("progress"));
  m.def("load", &load, py::arg("path"), "Loads a model file written by save() or the CLI.");
  m.def(
      "default_params",
      [](const std::string& preset) { return params_dict(preset_params(preset)); },
      py::arg("preset") = "", "The fit parameters (of a preset) as a dict, library names.");
  m.def(
      "load_image",
      [](py::handle file) {
        if (!is_path(file)) wrong_type("load_image", "a path", file);
        const fs::path path = to_path(file);
        if (!fs::exists(path)) raise_file_not_found("image", path);
        Image img = [&] {
          py::gil_scoped_release release;
          return load_image(path);
        }();
        return image_array(std::move(img));
      },
      py::arg("path"), "Reads an image file as the model does: uint8 RGB, H x W x 3.");
  m.def(
      "decode_image",
      [](py::bytes data, const std::string& name) {
        const std::string bytes = data;
        Image img = [&] {
          py::gil_scoped_release release;
          return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
        }();
        return image_array(std::move(img));
      },
      py::arg("data"), py::arg("name") = "bytes",
      "Decodes PNG, JPEG, BMP, TIFF or WebP bytes: uint8 RGB, H x W x 3.");
  m.def("set_opencv_threads", &set_opencv_threads, py::arg("threads"),
        "Size of OpenCV's process-wide pool (decoding, resizing, the OpenCV engine); 0: all "
        "cores. Call it before other threads use the library, if at all.");
  m.def(
      "_live_objects",
      [] {
        py::dict d;
        d["models"] = g_live_models.load();
        d["arrays"] = g_live_arrays.load();
        return d;
      },
      "C++ objects now owned by Python (models, arrays), for leak tests.");
}
