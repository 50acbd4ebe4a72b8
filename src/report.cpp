#include "report.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "error.h"
#include "image.h"
#include "metrics.h"
#include "overlay.h"
#include "threshold.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace patchcore {
namespace {

struct Row {
  Sample sample;
  double score = 0;
  double normalized = 0;
  bool predicted = false;
  std::string overlay;  // relative to the output folder, "" when not written
  std::string mask;
  int pixel_index = -1;    // into the pixel-metric maps/masks when the image has ground truth
  std::vector<float> map;  // kept only when pixel_index < 0: the galleries need every map
  cv::Rect content;        // the image's rectangle of the map (all of it unless padded)
};

json optional_json(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

std::string csv_escape(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

std::string fmt(double v, int digits = 4) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

std::string fmt(const json& v, int digits = 4) {
  return v.is_null() ? "n/a" : fmt(v.get<double>(), digits);
}

// ---- charts ---------------------------------------------------------------------------------

// Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo) || !std::isfinite(hi - lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * mag;
  for (double m : {1.0, 2.0, 2.5, 5.0}) {
    if (m * mag >= raw * 0.999) {
      step = m * mag;
      break;
    }
  }
  std::vector<double> ticks;
  const auto first = static_cast<long long>(std::ceil(lo / step - 1e-9));
  for (long long k = first; k * step <= hi + step * 1e-9 && ticks.size() < 50; ++k)
    ticks.push_back(static_cast<double>(k) * step);
  return ticks;
}

// Enough decimals to tell neighbouring ticks apart.
std::string tick_label(double v, const std::vector<double>& ticks) {
  const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : std::max(std::abs(v), 1.0);
  int digits = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  if (std::abs(step * std::pow(10.0, digits) - std::round(step * std::pow(10.0, digits))) > 1e-6)
    ++digits;  // 2.5 x 10^k
  return fmt(std::abs(v) < step * 1e-9 ? 0.0 : v, std::min(digits, 6));
}

// A plot area with linear axes in an SVG of w x h pixels.
struct Axes {
  int w = 340, h = 290, left = 52, right = 14, top = 28, bottom = 44;
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  double px(double x) const { return left + (w - left - right) * (x - x0) / (x1 - x0); }
  double py(double y) const { return h - bottom - (h - top - bottom) * (y - y0) / (y1 - y0); }

  // The frame, grid lines, tick marks, tick labels, title and axis labels.
  std::string frame(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                    const std::vector<double>& xt, const std::vector<double>& yt) const {
    std::ostringstream s;
    s << "<text class='title' x='" << (left + w - right) / 2 << "' y='16' text-anchor='middle'>"
      << title << "</text>";
    for (double x : xt) {
      const std::string X = fmt(px(x), 1);
      s << "<line class='grid' x1='" << X << "' y1='" << top << "' x2='" << X << "' y2='"
        << h - bottom << "'/><line class='tick' x1='" << X << "' y1='" << h - bottom << "' x2='"
        << X << "' y2='" << h - bottom + 4 << "'/><text x='" << X << "' y='" << h - bottom + 15
        << "' text-anchor='middle'>" << tick_label(x, xt) << "</text>";
    }
    for (double y : yt) {
      const std::string Y = fmt(py(y), 1);
      s << "<line class='grid' x1='" << left << "' y1='" << Y << "' x2='" << w - right << "' y2='"
        << Y << "'/><line class='tick' x1='" << left - 4 << "' y1='" << Y << "' x2='" << left
        << "' y2='" << Y << "'/><text x='" << left - 6 << "' y='" << fmt(py(y) + 3.5, 1)
        << "' text-anchor='end'>" << tick_label(y, yt) << "</text>";
    }
    s << "<rect class='frame' x='" << left << "' y='" << top << "' width='" << w - left - right
      << "' height='" << h - top - bottom << "'/>";
    s << "<text x='" << (left + w - right) / 2 << "' y='" << h - 8 << "' text-anchor='middle'>"
      << xlabel << "</text><text x='14' y='" << (top + h - bottom) / 2
      << "' transform='rotate(-90 14 " << (top + h - bottom) / 2 << ")' text-anchor='middle'>"
      << ylabel << "</text>";
    return s.str();
  }
};

// A curve as an SVG polyline. Pixel curves have millions of points: a point is kept only when
// it moves the line by half a pixel, which draws the same picture.
std::string svg_curve(const std::vector<double>& x, const std::vector<double>& y, double x_max,
                      const std::string& title, const std::string& xlabel,
                      const std::string& ylabel, bool chance_diagonal, const std::string& id) {
  Axes a;
  a.x1 = x_max;
  std::ostringstream s;
  s << "<svg class='chart' id='" << id << "' width='" << a.w << "' height='" << a.h
    << "' viewBox='0 0 " << a.w << " " << a.h << "' role='img'>";
  s << a.frame(title, xlabel, ylabel, nice_ticks(0, x_max, 5), nice_ticks(0, 1, 5));
  if (chance_diagonal)
    s << "<line class='chance' x1='" << a.px(0) << "' y1='" << a.py(0) << "' x2='" << a.px(1)
      << "' y2='" << a.py(1) << "'/>";
  std::ostringstream pts;
  size_t kept = 0;
  double last_x = -1e9, last_y = -1e9;
  for (size_t i = 0; i < x.size(); ++i) {
    const double px = a.px(std::clamp(x[i], 0.0, x_max));
    const double py = a.py(std::clamp(y[i], 0.0, 1.0));
    if (i + 1 != x.size() && std::abs(px - last_x) + std::abs(py - last_y) < 0.5) continue;
    pts << fmt(px, 1) << "," << fmt(py, 1) << " ";
    last_x = px;
    last_y = py;
    ++kept;
  }
  if (kept > 1) {
    // Light fill under the curve: the area is what the metric measures.
    s << "<polygon class='area' points='" << fmt(a.px(0), 1) << "," << fmt(a.py(0), 1) << " "
      << pts.str() << fmt(a.px(std::clamp(x.back(), 0.0, x_max)), 1) << "," << fmt(a.py(0), 1)
      << "'/>";
    s << "<polyline class='curve-line' data-points='" << kept << "' points='" << pts.str() << "'/>";
  } else {
    s << "<text x='" << a.px(x_max / 2) << "' y='" << a.py(0.5)
      << "' text-anchor='middle'>not available</text>";
  }
  s << "</svg>";
  return s.str();
}

// Histogram of normal vs anomalous image scores with the decision thresholds.
std::string svg_histogram(const std::vector<Row>& rows, double model_threshold,
                          const std::optional<double>& f1_threshold) {
  Axes a;
  a.w = 460;
  const int bins = 30;
  double lo = model_threshold, hi = model_threshold;
  for (const Row& row : rows) {
    lo = std::min(lo, row.score);
    hi = std::max(hi, row.score);
  }
  if (f1_threshold) {
    lo = std::min(lo, *f1_threshold);
    hi = std::max(hi, *f1_threshold);
  }
  if (!(hi > lo)) hi = lo + 1;
  const double pad = 0.02 * (hi - lo);
  lo -= pad;
  hi += pad;
  std::vector<int> normal(bins), anomalous(bins);
  for (const Row& row : rows) {
    const int i = std::clamp(static_cast<int>((row.score - lo) / (hi - lo) * bins), 0, bins - 1);
    (row.sample.label == 1 ? anomalous : normal)[i]++;
  }
  const int top = std::max(1, std::max(*std::max_element(normal.begin(), normal.end()),
                                       *std::max_element(anomalous.begin(), anomalous.end())));
  std::vector<double> yt = nice_ticks(0, top, 4);
  std::vector<double> int_ticks;  // counts are whole numbers
  for (double v : yt)
    if (std::abs(v - std::round(v)) < 1e-9) int_ticks.push_back(v);
  if (int_ticks.size() < 2) int_ticks = {0.0, static_cast<double>(top)};
  a.x0 = lo;
  a.x1 = hi;
  a.y1 = std::max(static_cast<double>(top), int_ticks.back()) * 1.08;
  std::ostringstream s;
  s << "<svg class='chart' id='histogram' width='" << a.w << "' height='" << a.h
    << "' viewBox='0 0 " << a.w << " " << a.h << "' role='img'>";
  s << a.frame("Image scores", "image score", "images", nice_ticks(lo, hi, 6), int_ticks);
  const double bw = (hi - lo) / bins;
  for (int i = 0; i < bins; ++i) {
    for (int pass = 0; pass < 2; ++pass) {
      const int count = pass ? anomalous[i] : normal[i];
      if (count == 0) continue;
      const double x = a.px(lo + i * bw) + 0.5;
      s << "<rect class='bar " << (pass ? "anomalous" : "normal") << "' x='" << fmt(x, 1) << "' y='"
        << fmt(a.py(count), 1) << "' width='"
        << fmt(std::max(1.0, a.px(lo + (i + 1) * bw) - x - 0.5), 1) << "' height='"
        << fmt(a.py(0) - a.py(count), 1) << "'><title>" << count
        << (pass ? " anomalous" : " normal") << "</title></rect>";
    }
  }
  auto vline = [&](double v, const std::string& cls, const std::string& label, int dy) {
    const double x = a.px(v);
    s << "<line class='" << cls << "' x1='" << fmt(x, 1) << "' y1='" << a.top << "' x2='"
      << fmt(x, 1) << "' y2='" << a.h - a.bottom << "'/>";
    const bool right_side = x < a.w - 120;
    s << "<text class='" << cls << "-label' x='" << fmt(right_side ? x + 4 : x - 4, 1) << "' y='"
      << a.top + dy << "' text-anchor='" << (right_side ? "start" : "end") << "'>" << label
      << "</text>";
  };
  vline(model_threshold, "threshold", "model threshold " + fmt(model_threshold, 3), 12);
  if (f1_threshold && std::abs(*f1_threshold - model_threshold) > 1e-12)
    vline(*f1_threshold, "f1threshold", "best-F1 threshold " + fmt(*f1_threshold, 3), 26);
  // The legend sits in the title row, clear of the bars.
  const int lx = a.w - a.right - 140, ly = 7;
  s << "<rect class='legend normal' x='" << lx << "' y='" << ly << "' width='10' height='10'/>"
    << "<text x='" << lx + 14 << "' y='" << ly + 9 << "'>normal</text>"
    << "<rect class='legend anomalous' x='" << lx + 64 << "' y='" << ly
    << "' width='10' height='10'/><text x='" << lx + 78 << "' y='" << ly + 9
    << "'>anomalous</text></svg>";
  return s.str();
}

// ---- pictures -------------------------------------------------------------------------------

// image | heatmap overlay | ground truth, side by side at a common height, for the galleries.
cv::Mat triptych(const cv::Mat& rgb, const cv::Mat& overlay_bgr, const cv::Mat& gt01, bool normal) {
  const int h = 180, gap = 6;
  auto fit = [&](const cv::Mat& m) {
    cv::Mat out;
    cv::resize(m, out, cv::Size(std::max(1, m.cols * h / m.rows), h), 0, 0,
               m.rows > h ? cv::INTER_AREA : cv::INTER_LINEAR);
    return out;
  };
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  cv::Mat small = fit(bgr);
  cv::Mat gt = small.clone();
  if (!gt01.empty()) {
    cv::Mat g;
    cv::resize(gt01, g, small.size(), 0, 0, cv::INTER_NEAREST);
    cv::Mat red(small.size(), CV_8UC3, cv::Scalar(40, 40, 230)), tinted;
    cv::addWeighted(small, 0.55, red, 0.45, 0, tinted);
    tinted.copyTo(gt, g);
    std::vector<std::vector<cv::Point>> contours;
    cv::findContours(g, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE);
    cv::drawContours(gt, contours, -1, cv::Scalar(40, 40, 230), 1, cv::LINE_AA);
  } else {
    // A normal image has nothing to outline; an anomalous one without a mask says so.
    const std::string label = normal ? "normal" : "no mask";
    cv::putText(gt, label, cv::Point(6, h - 8), cv::FONT_HERSHEY_SIMPLEX, 0.5, cv::Scalar(0, 0, 0),
                3, cv::LINE_AA);
    cv::putText(gt, label, cv::Point(6, h - 8), cv::FONT_HERSHEY_SIMPLEX, 0.5,
                cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
  }
  const cv::Mat space(h, gap, CV_8UC3, cv::Scalar(255, 255, 255));
  std::vector<cv::Mat> parts{small, space, fit(overlay_bgr), space, gt};
  cv::Mat out;
  cv::hconcat(parts, out);
  return out;
}

const char* kStyle = R"CSS(
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
 color:#1d2733;background:#f5f7fa}
main{max-width:1240px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:24px;margin:4px 0 2px}h2{font-size:18px;margin:28px 0 8px}
.sub{color:#5a6675;font-size:13px;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0 4px}
.card{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:10px 16px;min-width:140px}
.card .v{font-size:26px;font-weight:600}.card .k{font-size:12px;color:#5a6675}
table{border-collapse:collapse;background:#fff;font-size:13px}
td,th{border:1px solid #dde3ea;padding:5px 10px;text-align:right}
th{background:#eef2f6;font-weight:600}td:first-child,th:first-child{text-align:left}
.panel{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:6px}
.charts{display:flex;flex-wrap:wrap;gap:14px}
svg text{font-size:11px;fill:#1d2733}svg text.title{font-size:13px;font-weight:600}
svg .grid{stroke:#e8ecf1}svg .tick{stroke:#8a96a3}svg .frame{fill:none;stroke:#8a96a3}
svg .chance{stroke:#b8c1cb;stroke-dasharray:4 3}
svg .curve-line{fill:none;stroke:#c0392b;stroke-width:2;stroke-linejoin:round}
svg .area{fill:rgba(192,57,43,0.10);stroke:none}
svg .normal{fill:rgba(41,128,185,0.6)}svg .anomalous{fill:rgba(192,57,43,0.6)}
svg text.threshold-label,svg text.f1threshold-label{paint-order:stroke;stroke:#fff;
 stroke-width:3px;stroke-linejoin:round}
svg .threshold{stroke:#1d2733;stroke-dasharray:5 3;stroke-width:1.5}
svg .f1threshold{stroke:#7d3c98;stroke-dasharray:2 2;stroke-width:1.5}
svg text.f1threshold-label{fill:#7d3c98}
.gallery{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:6px}
figure img{display:block;height:180px}
figcaption{font-size:12px;margin-top:4px;max-width:552px;overflow-wrap:anywhere}
.cols{display:flex;font-size:11px;color:#5a6675;margin-bottom:2px}
.cols span{flex:1;text-align:center}
.flag{font-weight:600;color:#c0392b}.ok{color:#1e8449}
.note{font-size:12px;color:#5a6675;max-width:900px}
details{margin-top:24px}summary{cursor:pointer;font-weight:600}
)CSS";

// Sets data attributes on <body> once every image has loaded, so that a headless browser (the
// test, the screenshot script) can tell that the page rendered: pictures decoded, curves drawn.
const char* kScript = R"JS(
window.addEventListener('load', function () {
  var imgs = document.images, decoded = 0;
  for (var i = 0; i < imgs.length; i++)
    if (imgs[i].complete && imgs[i].naturalWidth > 0) decoded++;
  var drawn = 0, lines = document.querySelectorAll('svg polyline.curve-line');
  for (var j = 0; j < lines.length; j++) {
    var b = lines[j].getBBox();
    if (b.width > 10 && b.height > 10) drawn++;
  }
  var bars = 0, rects = document.querySelectorAll('svg rect.bar');
  for (var k = 0; k < rects.length; k++)
    if (rects[k].getBBox().height > 0) bars++;
  var d = document.body.dataset;
  d.imagesTotal = imgs.length;
  d.imagesDecoded = decoded;
  d.curves = lines.length;
  d.curvesDrawn = drawn;
  d.histogramBars = bars;
  d.ready = '1';
});
)JS";

}  // namespace

void write_text_file(const fs::path& file, const std::string& text) {
  std::error_code ec;
  if (!file.parent_path().empty()) fs::create_directories(file.parent_path(), ec);
  const fs::path tmp = file.string() + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      throw_bad_input(file.string(), "cannot write the file");
    }
  }
  fs::rename(tmp, file, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw_bad_input(file.string(), "cannot write the file: " + ec.message());
  }
}

std::string relative_link(const fs::path& file, const fs::path& dir) {
  return fs::relative(file, dir).generic_string();
}

EvalResult evaluate(const Model& model, const std::vector<Sample>& test, const EvalOptions& o,
                    const Callbacks& callbacks) {
  std::vector<Sample> labelled;
  for (const Sample& s : test)
    if (s.label == 0 || s.label == 1) labelled.push_back(s);
  if (labelled.empty())
    throw_bad_input("(test set)", "no labelled test images (expected test/good and test/<defect>)");
  const bool write = !o.out_dir.empty();
  if (write) {
    std::error_code ec;
    fs::create_directories(o.out_dir, ec);
    if (ec || !fs::is_directory(o.out_dir))
      throw_bad_input(o.out_dir.string(), "cannot create the output folder");
  }

  const Params& params = model.params();
  const Preprocess pre = preprocess_for(params);
  const int size = model.map_size();
  const Calibration& calib = model.calibration();

  std::vector<Row> rows;
  std::vector<std::vector<float>> maps;  // images with ground truth, for the pixel metrics
  std::vector<std::vector<uint8_t>> masks;
  std::vector<std::pair<int, int>> pixel_sizes;  // maps and masks hold the content rectangle
  std::vector<float> pixel_scores;
  std::vector<uint8_t> pixel_labels;
  int n_without_mask = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const size_t bs = static_cast<size_t>(std::max(1, params.batch_size));
  for (size_t start = 0; start < labelled.size(); start += bs) {
    std::vector<fs::path> paths;
    std::map<fs::path, const Sample*> by_path;
    for (size_t i = start; i < std::min(labelled.size(), start + bs); ++i) {
      paths.push_back(labelled[i].image);
      by_path[labelled[i].image] = &labelled[i];
    }
    Callbacks quiet = callbacks;  // progress is reported per evaluation, not per batch
    quiet.progress = nullptr;
    std::vector<Prediction> preds = model.predict(paths, quiet);
    for (Prediction& p : preds) {
      const Sample& s = *by_path.at(p.path);
      Row row{s, p.score, p.normalized_score, p.anomalous, "", "", -1, {}, {}};
      row.content = content_rect(cv::Size(p.image_width, p.image_height), pre);
      // Ground truth with the model's geometry: normal images have an empty mask.
      cv::Mat gt;
      if (s.label == 0) {
        gt = cv::Mat::zeros(size, size, CV_8U);
      } else if (s.mask) {
        try {
          gt = preprocess_mask(load_mask(*s.mask, 0), pre);
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::bad_input) throw;
          if (callbacks.log)
            callbacks.log(LogLevel::warning,
                          std::string(e.what()) + "; the image is left out of the pixel metrics");
        }
      } else {
        ++n_without_mask;
      }
      if (!gt.empty()) {
        // Pixel metrics over the image's own pixels: a pad is not part of the test image.
        const cv::Mat gt_in = gt(row.content).clone();
        const cv::Mat map_in =
            cv::Mat(size, size, CV_32F, p.map.values.data())(row.content).clone();
        std::vector<uint8_t> m(gt_in.begin<uint8_t>(), gt_in.end<uint8_t>());
        std::vector<float> v(map_in.begin<float>(), map_in.end<float>());
        pixel_scores.insert(pixel_scores.end(), v.begin(), v.end());
        pixel_labels.insert(pixel_labels.end(), m.begin(), m.end());
        row.pixel_index = static_cast<int>(maps.size());
        maps.push_back(std::move(v));
        masks.push_back(std::move(m));
        pixel_sizes.emplace_back(row.content.height, row.content.width);
      } else {
        row.map = std::move(p.map.values);
      }
      rows.push_back(std::move(row));
    }
    if (callbacks.progress)
      callbacks.progress("evaluate", static_cast<int64_t>(std::min(labelled.size(), start + bs)),
                         static_cast<int64_t>(labelled.size()));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rows.empty()) throw_bad_input("(test set)", "none of the test images could be read");
  // Scores of the image's own pixels (the whole map unless padded).
  auto map_of = [&](const Row& r) -> const std::vector<float>& {
    return r.pixel_index >= 0 ? maps[r.pixel_index] : r.map;
  };

  // One colour scale for every heatmap of this evaluation: the calibration's scale is often
  // so narrow that a map is one flat colour below the threshold; this one spans the test set's
  // pixel scores (1st percentile -> blue, pixel threshold -> middle, maximum -> red).
  HeatScale scale{0, calib.pixel_threshold, 0};
  {
    std::vector<float> sample;
    for (const Row& r : rows)
      for (size_t i = 0; i < map_of(r).size(); i += 7) sample.push_back(map_of(r)[i]);
    const auto [lo, hi] = std::minmax_element(sample.begin(), sample.end());
    scale.hi = std::max(static_cast<double>(*hi), calib.pixel_threshold);
    std::nth_element(sample.begin(), sample.begin() + sample.size() / 100, sample.end());
    scale.lo = std::min(static_cast<double>(sample[sample.size() / 100]), calib.pixel_threshold);
    if (!(scale.hi > scale.threshold)) scale.hi = scale.threshold + (scale.threshold - scale.lo);
  }
  auto overlay_of = [&](const cv::Mat& rgb, const Row& r) {
    AnomalyMap map{size, size, r.map};
    if (r.pixel_index >= 0) {  // back into a full map: map_to_image reads only the rectangle
      cv::Mat full(size, size, CV_32F, cv::Scalar(0));
      cv::Mat(r.content.height, r.content.width, CV_32F,
              const_cast<float*>(maps[r.pixel_index].data()))
          .copyTo(full(r.content));
      map.values.assign(full.begin<float>(), full.end<float>());
    }
    cv::Mat on_image = map_to_image(map, rgb.size(), pre);
    return std::pair(heatmap_overlay(rgb, on_image, calib, scale), predicted_mask(on_image, calib));
  };
  if (write && o.write_images) {
    for (Row& r : rows) {
      const fs::path dir =
          o.out_dir / "images" / (r.sample.kind.empty() ? "unknown" : r.sample.kind);
      const std::string stem = r.sample.image.stem().string();
      const auto [overlay, mask] = overlay_of(load_rgb(r.sample.image), r);
      write_bgr(dir / (stem + ".png"), overlay);
      write_bgr(dir / (stem + "_mask.png"), mask);
      r.overlay = relative_link(dir / (stem + ".png"), o.out_dir);
      r.mask = relative_link(dir / (stem + "_mask.png"), o.out_dir);
    }
  }

  std::vector<float> scores;
  std::vector<uint8_t> labels;
  for (const Row& r : rows) {
    scores.push_back(static_cast<float>(r.score));
    labels.push_back(static_cast<uint8_t>(r.sample.label));
  }
  EvalResult result;
  json j;
  j["n_images"] = rows.size();
  j["n_skipped"] = labelled.size() - rows.size();
  j["image_auroc"] = optional_json(auroc(scores, labels));
  const bool pixel_ok =
      std::find(pixel_labels.begin(), pixel_labels.end(), 1) != pixel_labels.end() &&
      std::find(pixel_labels.begin(), pixel_labels.end(), 0) != pixel_labels.end();
  std::optional<Pro> pro;
  j["pixel_auroc"] = pixel_ok ? optional_json(auroc(pixel_scores, pixel_labels)) : json(nullptr);
  if (pixel_ok) pro = aupro(maps, masks, pixel_sizes, 0.3);
  j["aupro"] = pro ? json(pro->aupro) : json(nullptr);
  j["n_pixel_images"] = maps.size();
  j["n_anomalous_without_mask"] = n_without_mask;
  const std::optional<F1> f1 = best_f1(scores, labels);
  j["image_f1"] = f1 ? json(f1->f1) : json(nullptr);
  j["image_threshold"] = f1 ? json(f1->threshold) : json(nullptr);
  j["map_size"] = size;

  // Decisions at the model's own threshold: what a production line would have seen.
  int tp = 0, fp = 0, tn = 0, fn = 0;
  for (const Row& r : rows) {
    if (r.sample.label == 1)
      (r.predicted ? tp : fn)++;
    else
      (r.predicted ? fp : tn)++;
  }
  j["model_threshold"] = {{"image_threshold", calib.image_threshold},
                          {"pixel_threshold", calib.pixel_threshold},
                          {"source", calib.source},
                          {"tp", tp},
                          {"fp", fp},
                          {"tn", tn},
                          {"fn", fn}};

  // Per kind: each anomalous kind against the normal test images, for images and for pixels.
  std::vector<int> normal_pixel_rows;
  for (const Row& r : rows)
    if (r.sample.label == 0 && r.pixel_index >= 0) normal_pixel_rows.push_back(r.pixel_index);
  json per_kind = json::object();
  std::map<std::string, std::vector<const Row*>> kinds;
  for (const Row& r : rows) kinds[r.sample.kind].push_back(&r);
  for (const auto& [kind, members] : kinds) {
    json k{{"n", members.size()}};
    double sum = 0;
    int flagged = 0;
    for (const Row* r : members) {
      sum += r->score;
      flagged += r->predicted ? 1 : 0;
    }
    k["mean_score"] = sum / static_cast<double>(members.size());
    k["n_flagged"] = flagged;
    const bool anomalous_kind = std::all_of(members.begin(), members.end(),
                                            [](const Row* r) { return r->sample.label == 1; });
    if (anomalous_kind) {
      std::vector<float> s;
      std::vector<uint8_t> l;
      for (const Row& r : rows) {
        if (r.sample.kind == kind || r.sample.label == 0) {
          s.push_back(static_cast<float>(r.score));
          l.push_back(static_cast<uint8_t>(r.sample.label));
        }
      }
      k["image_auroc"] = optional_json(auroc(s, l));
      std::vector<int> pixel_rows = normal_pixel_rows;
      for (const Row* r : members)
        if (r->pixel_index >= 0) pixel_rows.push_back(r->pixel_index);
      std::vector<std::vector<float>> kind_maps;
      std::vector<std::vector<uint8_t>> kind_masks;
      std::vector<std::pair<int, int>> kind_sizes;
      std::vector<float> ps;
      std::vector<uint8_t> pl;
      bool has_defect = false;
      for (int i : pixel_rows) {
        ps.insert(ps.end(), maps[i].begin(), maps[i].end());
        pl.insert(pl.end(), masks[i].begin(), masks[i].end());
        has_defect = has_defect || std::find(masks[i].begin(), masks[i].end(), 1) != masks[i].end();
      }
      const bool kind_pixel_ok = has_defect && std::find(pl.begin(), pl.end(), 0) != pl.end();
      k["pixel_auroc"] = kind_pixel_ok ? optional_json(auroc(ps, pl)) : json(nullptr);
      std::optional<Pro> kind_pro;
      if (kind_pixel_ok) {
        ps = {};
        pl = {};
        for (int i : pixel_rows) {
          kind_maps.push_back(maps[i]);
          kind_masks.push_back(masks[i]);
          kind_sizes.push_back(pixel_sizes[i]);
        }
        kind_pro = aupro(kind_maps, kind_masks, kind_sizes, 0.3);
      }
      k["aupro"] = kind_pro ? json(kind_pro->aupro) : json(nullptr);
    }
    per_kind[kind] = k;
  }
  j["per_kind"] = per_kind;
  j["ms_per_image"] = 1000.0 * seconds / static_cast<double>(rows.size());

  if (f1) {
    result.f1_calibration = calibrate_from_labels(scores, labels, pixel_scores, pixel_labels);
    result.has_f1 = true;
  }
  result.metrics_json = j.dump(2);
  if (!write) return result;

  // predictions.csv
  std::ostringstream csv;
  csv << "path,kind,label,score,normalized_score,predicted\n";
  for (const Row& r : rows)
    csv << csv_escape(r.sample.image.string()) << "," << csv_escape(r.sample.kind) << ","
        << r.sample.label << "," << fmt(r.score, 6) << "," << fmt(r.normalized, 6) << ","
        << (r.predicted ? 1 : 0) << "\n";
  write_text_file(o.out_dir / "predictions.csv", csv.str());
  write_text_file(o.out_dir / "metrics.json", j.dump(2) + "\n");

  // report.html: metrics, curves, score histogram and the galleries.
  std::vector<const Row*> normal, anomalous;
  for (const Row& r : rows) (r.sample.label == 1 ? anomalous : normal).push_back(&r);
  std::stable_sort(normal.begin(), normal.end(),
                   [](auto a, auto b) { return a->score > b->score; });
  std::stable_sort(anomalous.begin(), anomalous.end(),
                   [](auto a, auto b) { return a->score < b->score; });
  auto gallery = [&](const std::string& id, const std::string& title, const std::string& note,
                     const std::vector<const Row*>& items) {
    std::ostringstream s;
    s << "<section class='gallery-section' id='" << id << "'><h2>" << title
      << "</h2><p class='note'>" << note << "</p><div class='gallery'>";
    if (items.empty()) s << "<p>none</p>";
    int i = 0;
    for (const Row* r : items) {
      cv::Mat rgb = load_rgb(r->sample.image);
      cv::Mat gt;
      if (r->sample.mask) {
        try {
          gt = load_mask(*r->sample.mask, 0);
        } catch (const Error&) {
          // already reported while computing the metrics
        }
      }
      const std::string name = "gallery/" + id + "_" + std::to_string(i++) + ".png";
      write_bgr(o.out_dir / name,
                  triptych(rgb, overlay_of(rgb, *r).first, gt, r->sample.label == 0));
      const bool wrong = r->predicted != (r->sample.label == 1);
      s << "<figure><div class='cols'><span>image</span><span>heatmap</span><span>"
        << "ground truth</span></div><img src='" << name << "' alt='"
        << html_escape(r->sample.image.string()) << "'><figcaption><b>"
        << html_escape(r->sample.kind) << "</b> / "
        << html_escape(r->sample.image.filename().string()) << ": score " << fmt(r->score, 4)
        << " (normalised " << fmt(r->normalized, 2) << "), "
        << "<span class='" << (wrong ? "flag" : "ok") << "'>"
        << (r->predicted ? "flagged" : "passed") << "</span></figcaption></figure>";
    }
    s << "</div></section>";
    return s.str();
  };
  const size_t g = 6;
  std::vector<const Row*> worst_fp(normal.begin(), normal.begin() + std::min(g, normal.size()));
  std::vector<const Row*> worst_fn(anomalous.begin(),
                                   anomalous.begin() + std::min(g, anomalous.size()));
  std::vector<const Row*> best(anomalous.rbegin(),
                               anomalous.rbegin() + std::min(g, anomalous.size()));

  std::ostringstream html;
  const std::string backbone = fs::path(params.backbone).filename().string();
  html << "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
       << "<meta name='viewport' content='width=device-width, initial-scale=1'>"
       << "<title>patchcore evaluation</title><style>" << kStyle << "</style><script>" << kScript
       << "</script></head><body><main><section id='summary'>";
  html << "<h1>patchcore evaluation</h1><p class='sub'>" << rows.size() << " test images ("
       << normal.size() << " normal, " << anomalous.size() << " anomalous) &middot; backbone "
       << html_escape(backbone) << " &middot; map " << size << "&times;" << size
       << (params.resize != Resize::squash ? " (padded; image pixels only)" : "")
       << " &middot; coreset " << fmt(params.coreset_ratio, 3) << " (at least "
       << params.coreset_min << " patches) &middot; " << fmt(j["ms_per_image"].get<double>(), 1)
       << " ms/image</p>";
  auto card = [&](const std::string& key, const std::string& value) {
    html << "<div class='card'><div class='v'>" << value << "</div><div class='k'>" << key
         << "</div></div>";
  };
  html << "<div class='cards'>";
  card("image AUROC", fmt(j["image_auroc"], 3));
  card("pixel AUROC", fmt(j["pixel_auroc"], 3));
  card("AUPRO (FPR &le; 0.3)", fmt(j["aupro"], 3));
  card("best image F1", fmt(j["image_f1"], 3));
  card("flagged at model threshold", std::to_string(tp + fp) + " / " + std::to_string(rows.size()));
  html << "</div>";

  html << "<h2>Metrics per kind</h2><table><tr><th>kind</th><th>images</th><th>mean score</th>"
       << "<th>flagged</th><th>image AUROC</th><th>pixel AUROC</th><th>AUPRO</th></tr>";
  for (const auto& [kind, k] : per_kind.items()) {
    auto cell = [&](const char* key) {
      return k.contains(key) ? fmt(k[key], 3) : std::string("&ndash;");
    };
    html << "<tr><td>" << html_escape(kind) << "</td><td>" << k["n"] << "</td><td>"
         << fmt(k["mean_score"].get<double>()) << "</td><td>" << k["n_flagged"] << " / " << k["n"]
         << "</td><td>" << cell("image_auroc") << "</td><td>" << cell("pixel_auroc") << "</td><td>"
         << cell("aupro") << "</td></tr>";
  }
  html << "<tr><th>all</th><th>" << rows.size() << "</th><th></th><th>" << tp + fp << " / "
       << rows.size() << "</th><th>" << fmt(j["image_auroc"], 3) << "</th><th>"
       << fmt(j["pixel_auroc"], 3) << "</th><th>" << fmt(j["aupro"], 3) << "</th></tr></table>"
       << "<p class='note'>Each anomalous kind is scored against the normal test images. "
       << "Pixel metrics at the " << size << "&times;" << size << " map resolution over "
       << maps.size() << " images with ground truth";
  if (n_without_mask > 0) html << " (" << n_without_mask << " anomalous images have no mask)";
  html << ".</p>";

  html << "<h2>Thresholds</h2><table><tr><th></th><th>image threshold</th><th>pixel threshold"
       << "</th><th>true pos.</th><th>false pos.</th><th>true neg.</th><th>false neg.</th></tr>"
       << "<tr><td>model (" << html_escape(calib.source) << ")</td><td>"
       << fmt(calib.image_threshold) << "</td><td>" << fmt(calib.pixel_threshold) << "</td><td>"
       << tp << "</td><td>" << fp << "</td><td>" << tn << "</td><td>" << fn << "</td></tr>";
  if (f1) {
    int ftp = 0, ffp = 0;
    for (const Row& r : rows)
      if (r.score >= f1->threshold) (r.sample.label == 1 ? ftp : ffp)++;
    html << "<tr><td>best F1 (" << fmt(f1->f1, 3) << ")</td><td>" << fmt(f1->threshold)
         << "</td><td>" << fmt(result.f1_calibration.pixel_threshold) << "</td><td>" << ftp
         << "</td><td>" << ffp << "</td><td>" << static_cast<int>(normal.size()) - ffp
         << "</td><td>" << static_cast<int>(anomalous.size()) - ftp << "</td></tr>";
  }
  html << "</table><p class='note'>The model threshold is the one stored in the model ("
       << "&ldquo;holdout&rdquo;: set from held-out normal training images). The best-F1 "
       << "threshold is chosen on these labels; <code>patchcore eval --save-threshold</code> "
       << "stores it in the model.</p>";

  html << "</section><section id='curves'><h2>Curves</h2><div class='charts'>";
  const Curve roc = roc_curve(scores, labels);
  html << "<div class='panel'>"
       << svg_curve(roc.x, roc.y, 1.0, "ROC, images (AUROC " + fmt(j["image_auroc"], 3) + ")",
                    "false positive rate", "true positive rate", true, "roc")
       << "</div>";
  if (pro)
    html << "<div class='panel'>"
         << svg_curve(pro->curve.x, pro->curve.y, 0.3,
                      "PRO, pixels (AUPRO " + fmt(pro->aupro, 3) + ")", "false positive rate",
                      "per-region overlap", false, "pro")
         << "</div>";
  html << "<div class='panel'>"
       << svg_histogram(rows, calib.image_threshold,
                        f1 ? std::optional<double>(f1->threshold) : std::nullopt)
       << "</div></div></section>";

  html << gallery("worst-false-positives", "Worst false positives",
                  "Normal test images with the highest scores: what the model mistakes for a "
                  "defect. Red when flagged at the model threshold.",
                  worst_fp);
  html << gallery("worst-false-negatives", "Worst false negatives",
                  "Anomalous test images with the lowest scores: the defects the model finds "
                  "least.",
                  worst_fn);
  html << gallery("best-detections", "Best detections",
                  "Anomalous test images with the highest scores.", best);
  html << "<section id='legend'><p class='note'>Each picture: the image | the heatmap (jet "
          "colour map: blue at pixel score "
       << fmt(scale.lo, 3) << " (1st percentile of the test pixels), the middle at the pixel "
       << "threshold " << fmt(scale.threshold, 3) << ", red at " << fmt(scale.hi, 3)
       << ") with the predicted region (at or above the pixel threshold) outlined in white | "
          "the ground truth tinted and outlined in red. The same scale colours images/.</p>"
          "</section>";

  if (o.write_images) {
    html << "<section id='all-images'><details><summary>All " << rows.size()
         << " images, by score</summary><table><tr>"
         << "<th>image</th><th>kind</th><th>score</th><th>normalised</th><th>decision</th>"
         << "<th>heatmap</th><th>mask</th></tr>";
    std::vector<const Row*> all;
    for (const Row& r : rows) all.push_back(&r);
    std::stable_sort(all.begin(), all.end(), [](auto a, auto b) { return a->score > b->score; });
    for (const Row* r : all) {
      const bool wrong = r->predicted != (r->sample.label == 1);
      html << "<tr><td>" << html_escape(r->sample.image.filename().string()) << "</td><td>"
           << html_escape(r->sample.kind) << "</td><td>" << fmt(r->score) << "</td><td>"
           << fmt(r->normalized, 2) << "</td><td class='" << (wrong ? "flag" : "ok") << "'>"
           << (r->predicted ? "flagged" : "passed") << "</td><td><a href='"
           << html_escape(r->overlay) << "'>png</a></td><td><a href='" << html_escape(r->mask)
           << "'>png</a></td></tr>";
    }
    html << "</table></details></section>";
  }
  html << "</main></body></html>\n";
  write_text_file(o.out_dir / "report.html", html.str());
  return result;
}

EvalResult evaluate(const Model& model, const fs::path& data, const EvalOptions& o,
                    const Callbacks& callbacks) {
  const Dataset d = scan_dataset(data);
  if (!d.mvtec || d.test.empty())
    throw_bad_input(data.string(),
                    "evaluation needs labelled images: test/good and test/<defect> folders "
                    "(MVTec AD layout)");
  return evaluate(model, d.test, o, callbacks);
}

}  // namespace patchcore
