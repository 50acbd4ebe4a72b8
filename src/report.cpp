#include "report.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

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
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += ch;
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

std::string fmt(const json& v) { return v.is_null() ? "n/a" : fmt(v.get<double>()); }

void write_image(const fs::path& file, const cv::Mat& bgr) {
  std::error_code ec;
  fs::create_directories(file.parent_path(), ec);
  bool ok = false;
  try {
    ok = cv::imwrite(file.string(), bgr);
  } catch (const cv::Exception& e) {
    throw_bad_input(file.string(), std::string("cannot write image: ") + e.what());
  }
  if (!ok) throw_bad_input(file.string(), "cannot write image");
}

// A polyline SVG of a curve in the unit square.
std::string svg_curve(const std::vector<double>& x, const std::vector<double>& y,
                      double x_max, const std::string& title, const std::string& xlabel,
                      const std::string& ylabel) {
  const int w = 320, h = 260, l = 44, b = 36, t = 24, r = 12;
  std::ostringstream s;
  s << "<svg class='curve' width='" << w << "' height='" << h << "' viewBox='0 0 " << w << " "
    << h << "'><text x='" << w / 2 << "' y='16' text-anchor='middle'>" << title << "</text>";
  s << "<rect x='" << l << "' y='" << t << "' width='" << w - l - r << "' height='"
    << h - t - b << "' fill='none' stroke='#888'/>";
  s << "<line x1='" << l << "' y1='" << h - b << "' x2='" << w - r << "' y2='" << t
    << "' stroke='#ccc' stroke-dasharray='4'/>";
  s << "<polyline fill='none' stroke='#c0392b' stroke-width='2' points='";
  // Pixel curves have millions of points; a few hundred draw the same line.
  const size_t step = std::max<size_t>(1, x.size() / 600);
  std::vector<size_t> points;
  for (size_t i = 0; i < x.size(); i += step) points.push_back(i);
  if (!x.empty() && points.back() != x.size() - 1) points.push_back(x.size() - 1);
  for (size_t i : points) {
    const double px = l + (w - l - r) * std::clamp(x[i] / x_max, 0.0, 1.0);
    const double py = h - b - (h - t - b) * std::clamp(y[i], 0.0, 1.0);
    s << fmt(px, 1) << "," << fmt(py, 1) << " ";
  }
  s << "'/><text x='" << (l + w - r) / 2 << "' y='" << h - 6 << "' text-anchor='middle'>"
    << xlabel << "</text><text x='12' y='" << (t + h - b) / 2 << "' transform='rotate(-90 12 "
    << (t + h - b) / 2 << ")' text-anchor='middle'>" << ylabel << "</text>";
  s << "<text x='" << l - 4 << "' y='" << h - b + 4 << "' text-anchor='end'>0</text><text x='"
    << l - 4 << "' y='" << t + 8 << "' text-anchor='end'>1</text><text x='" << w - r
    << "' y='" << h - b + 14 << "' text-anchor='end'>" << fmt(x_max, 1) << "</text></svg>";
  return s.str();
}

// Histogram of normal vs anomalous scores with the threshold.
std::string svg_histogram(const std::vector<Row>& rows, double threshold) {
  const int w = 420, h = 260, l = 40, b = 36, t = 24, r = 12, bins = 30;
  double lo = threshold, hi = threshold;
  for (const Row& row : rows) {
    lo = std::min(lo, row.score);
    hi = std::max(hi, row.score);
  }
  if (hi <= lo) hi = lo + 1;
  std::vector<int> normal(bins), anomalous(bins);
  for (const Row& row : rows) {
    const int i = std::clamp(static_cast<int>((row.score - lo) / (hi - lo) * bins), 0, bins - 1);
    (row.sample.label == 1 ? anomalous : normal)[i]++;
  }
  const int top = std::max(1, std::max(*std::max_element(normal.begin(), normal.end()),
                                       *std::max_element(anomalous.begin(), anomalous.end())));
  const double bw = static_cast<double>(w - l - r) / bins;
  std::ostringstream s;
  s << "<svg class='hist' width='" << w << "' height='" << h << "' viewBox='0 0 " << w << " " << h
    << "'><text x='" << w / 2 << "' y='16' text-anchor='middle'>Image scores</text>";
  for (int i = 0; i < bins; ++i) {
    for (int pass = 0; pass < 2; ++pass) {
      const int count = pass ? anomalous[i] : normal[i];
      const double bh = static_cast<double>(h - t - b) * count / top;
      s << "<rect x='" << fmt(l + i * bw, 1) << "' y='" << fmt(h - b - bh, 1) << "' width='"
        << fmt(bw - 1, 1) << "' height='" << fmt(bh, 1) << "' fill='"
        << (pass ? "rgba(192,57,43,0.55)" : "rgba(41,128,185,0.55)") << "'/>";
    }
  }
  const double tx = l + (w - l - r) * (threshold - lo) / (hi - lo);
  s << "<line x1='" << fmt(tx, 1) << "' y1='" << t << "' x2='" << fmt(tx, 1) << "' y2='" << h - b
    << "' stroke='black' stroke-dasharray='5'/><text x='" << fmt(tx + 3, 1) << "' y='" << t + 12
    << "'>threshold " << fmt(threshold, 3) << "</text>";
  s << "<text x='" << l << "' y='" << h - 6 << "'>" << fmt(lo, 3) << "</text><text x='" << w - r
    << "' y='" << h - 6 << "' text-anchor='end'>" << fmt(hi, 3) << "</text>";
  s << "<rect x='" << w - 150 << "' y='" << t + 4 << "' width='10' height='10' "
    << "fill='rgba(41,128,185,0.55)'/><text x='" << w - 136 << "' y='" << t + 13
    << "'>normal</text><rect x='" << w - 80 << "' y='" << t + 4 << "' width='10' height='10' "
    << "fill='rgba(192,57,43,0.55)'/><text x='" << w - 66 << "' y='" << t + 13
    << "'>anomalous</text></svg>";
  return s.str();
}

// image | overlay | ground truth, side by side, for the report's galleries.
cv::Mat triptych(const cv::Mat& rgb, const cv::Mat& overlay_bgr, const cv::Mat& gt01) {
  const int h = 200;
  auto fit = [&](const cv::Mat& m) {
    cv::Mat out;
    cv::resize(m, out, cv::Size(std::max(1, m.cols * h / m.rows), h), 0, 0, cv::INTER_AREA);
    return out;
  };
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  cv::Mat gt = bgr.clone();
  if (!gt01.empty()) {
    cv::Mat g;
    cv::resize(gt01, g, bgr.size(), 0, 0, cv::INTER_NEAREST);
    std::vector<std::vector<cv::Point>> contours;
    cv::findContours(g, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE);
    cv::drawContours(gt, contours, -1, cv::Scalar(0, 0, 255),
                     std::max(1, std::min(gt.rows, gt.cols) / 150), cv::LINE_AA);
  }
  std::vector<cv::Mat> parts{fit(bgr), fit(overlay_bgr), fit(gt)};
  cv::Mat out;
  cv::hconcat(parts, out);
  return out;
}

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
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec || !fs::is_directory(o.out_dir))
    throw_bad_input(o.out_dir.string(), "cannot create the output folder");

  const Params& params = model.params();
  const Preprocess pre{params.image_size, params.crop,
                       normalization_from_string(params.normalization)};
  const int size = model.map_size();
  const Calibration& calib = model.calibration();

  std::vector<Row> rows;
  std::vector<std::vector<float>> maps;         // for pixel metrics
  std::vector<std::vector<uint8_t>> masks;
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
      Row row{s, p.score, p.normalized_score, p.anomalous, "", ""};
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
            callbacks.log(LogLevel::warning, std::string(e.what()) +
                                                 "; the image is left out of the pixel metrics");
        }
      } else {
        ++n_without_mask;
      }
      if (!gt.empty()) {
        std::vector<uint8_t> m(gt.begin<uint8_t>(), gt.end<uint8_t>());
        pixel_scores.insert(pixel_scores.end(), p.map.values.begin(), p.map.values.end());
        pixel_labels.insert(pixel_labels.end(), m.begin(), m.end());
        maps.push_back(p.map.values);
        masks.push_back(std::move(m));
      }
      if (o.write_images) {
        const fs::path dir = o.out_dir / "images" / (s.kind.empty() ? "unknown" : s.kind);
        const std::string stem = s.image.stem().string();
        cv::Mat rgb = load_rgb(s.image);
        cv::Mat on_image = map_to_image(p.map, rgb.size(), pre);
        write_image(dir / (stem + ".png"), heatmap_overlay(rgb, on_image, calib));
        write_image(dir / (stem + "_mask.png"), predicted_mask(on_image, calib));
        row.overlay = relative_link(dir / (stem + ".png"), o.out_dir);
        row.mask = relative_link(dir / (stem + "_mask.png"), o.out_dir);
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

  std::vector<float> scores;
  std::vector<uint8_t> labels;
  for (const Row& r : rows) {
    scores.push_back(static_cast<float>(r.score));
    labels.push_back(static_cast<uint8_t>(r.sample.label));
  }
  EvalResult result;
  json& j = result.metrics;
  j["n_images"] = rows.size();
  j["n_skipped"] = labelled.size() - rows.size();
  j["image_auroc"] = optional_json(auroc(scores, labels));
  const bool pixel_ok =
      std::find(pixel_labels.begin(), pixel_labels.end(), 1) != pixel_labels.end() &&
      std::find(pixel_labels.begin(), pixel_labels.end(), 0) != pixel_labels.end();
  std::optional<Pro> pro;
  j["pixel_auroc"] = pixel_ok ? optional_json(auroc(pixel_scores, pixel_labels)) : json(nullptr);
  if (pixel_ok) pro = aupro(maps, masks, size, size, 0.3);
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
    if (r.sample.label == 1) (r.predicted ? tp : fn)++;
    else (r.predicted ? fp : tn)++;
  }
  j["model_threshold"] = {{"image_threshold", calib.image_threshold},
                          {"pixel_threshold", calib.pixel_threshold},
                          {"source", calib.source},
                          {"tp", tp}, {"fp", fp}, {"tn", tn}, {"fn", fn}};
  json per_kind = json::object();
  std::map<std::string, std::vector<const Row*>> kinds;
  for (const Row& r : rows) kinds[r.sample.kind].push_back(&r);
  for (const auto& [kind, members] : kinds) {
    json k{{"n", members.size()}};
    double sum = 0;
    for (const Row* r : members) sum += r->score;
    k["mean_score"] = sum / static_cast<double>(members.size());
    if (kind != "good") {
      std::vector<float> s;
      std::vector<uint8_t> l;
      for (const Row& r : rows) {
        if (r.sample.kind == kind || r.sample.label == 0) {
          s.push_back(static_cast<float>(r.score));
          l.push_back(static_cast<uint8_t>(r.sample.label));
        }
      }
      k["image_auroc"] = optional_json(auroc(s, l));
    }
    per_kind[kind] = k;
  }
  j["per_kind"] = per_kind;
  j["ms_per_image"] = 1000.0 * seconds / static_cast<double>(rows.size());

  if (f1) {
    result.f1_calibration = calibrate_from_labels(scores, labels, pixel_scores, pixel_labels);
    result.has_f1 = true;
  }

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
  std::sort(normal.begin(), normal.end(), [](auto a, auto b) { return a->score > b->score; });
  std::sort(anomalous.begin(), anomalous.end(),
            [](auto a, auto b) { return a->score < b->score; });
  auto gallery = [&](const std::string& title, std::vector<const Row*> items,
                     const std::string& tag) {
    std::ostringstream s;
    s << "<h2>" << title << "</h2><div class='gallery'>";
    if (items.empty()) s << "<p>none</p>";
    int i = 0;
    for (const Row* r : items) {
      cv::Mat rgb = load_rgb(r->sample.image);
      std::vector<Prediction> again =
          model.predict(std::vector<fs::path>{r->sample.image}, Callbacks{});
      if (again.empty()) continue;
      cv::Mat m = map_to_image(again[0].map, rgb.size(), pre);
      cv::Mat gt;
      if (r->sample.mask) {
        try {
          gt = load_mask(*r->sample.mask, 0);
        } catch (const Error&) {
          // already reported while computing the metrics
        }
      }
      const std::string name = "gallery/" + tag + "_" + std::to_string(i++) + ".png";
      write_image(o.out_dir / name, triptych(rgb, heatmap_overlay(rgb, m, calib), gt));
      s << "<figure><img src='" << name << "' alt='" << html_escape(r->sample.image.string())
        << "'><figcaption>" << html_escape(r->sample.kind) << " / "
        << html_escape(r->sample.image.filename().string()) << ": score " << fmt(r->score, 4)
        << " (" << fmt(r->normalized, 2) << ")</figcaption></figure>";
    }
    s << "</div>";
    return s.str();
  };
  const size_t g = 6;
  std::vector<const Row*> worst_fp(normal.begin(), normal.begin() + std::min(g, normal.size()));
  std::vector<const Row*> worst_fn(anomalous.begin(),
                                   anomalous.begin() + std::min(g, anomalous.size()));
  std::vector<const Row*> best(anomalous.rbegin(),
                               anomalous.rbegin() + std::min(g, anomalous.size()));
  std::ostringstream html;
  html << "<!DOCTYPE html><html><head><meta charset='utf-8'><title>patchcore evaluation</title>"
       << "<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:"
       << "collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:"
       << "#f3f3f3}.gallery{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figure img{"
       << "height:200px;border:1px solid #ddd}figcaption{font-size:12px}svg text{font-size:11px}"
       << ".charts{display:flex;flex-wrap:wrap;gap:20px}</style></head><body>";
  html << "<h1>patchcore evaluation</h1><p>" << rows.size() << " test images, map "
       << size << "&times;" << size << ", " << fmt(j["ms_per_image"].get<double>(), 1)
       << " ms/image. Model threshold " << fmt(calib.image_threshold, 4) << " ("
       << html_escape(calib.source) << ").</p>";
  html << "<table><tr><th>image AUROC</th><th>pixel AUROC</th><th>AUPRO (FPR&le;0.3)</th>"
       << "<th>best F1</th><th>F1 threshold</th></tr><tr><td>" << fmt(j["image_auroc"])
       << "</td><td>" << fmt(j["pixel_auroc"]) << "</td><td>" << fmt(j["aupro"]) << "</td><td>"
       << fmt(j["image_f1"]) << "</td><td>" << fmt(j["image_threshold"]) << "</td></tr></table>";
  html << "<h2>Per kind</h2><table><tr><th>kind</th><th>images</th><th>mean score</th>"
       << "<th>image AUROC vs good</th></tr>";
  for (const auto& [kind, k] : per_kind.items())
    html << "<tr><td>" << html_escape(kind) << "</td><td>" << k["n"] << "</td><td>"
         << fmt(k["mean_score"].get<double>()) << "</td><td>"
         << (k.contains("image_auroc") ? fmt(k["image_auroc"]) : std::string("")) << "</td></tr>";
  html << "</table><p>At the model threshold: " << tp << " true positives, " << fp
       << " false positives, " << tn << " true negatives, " << fn << " false negatives.</p>";
  html << "<div class='charts'>";
  const Curve roc = roc_curve(scores, labels);
  html << svg_curve(roc.x, roc.y, 1.0, "ROC (images)", "false positive rate",
                    "true positive rate");
  if (pro)
    html << svg_curve(pro->curve.x, pro->curve.y, 0.3, "PRO (pixels)", "false positive rate",
                      "per-region overlap");
  html << svg_histogram(rows, calib.image_threshold) << "</div>";
  html << gallery("Worst false positives (normal images with the highest scores)", worst_fp,
                  "fp");
  html << gallery("Worst false negatives (anomalous images with the lowest scores)", worst_fn,
                  "fn");
  html << gallery("Best detections", best, "tp");
  html << "<p>Each picture: image | heatmap with the predicted region outlined | ground truth "
          "outlined in red.</p></body></html>\n";
  write_text_file(o.out_dir / "report.html", html.str());
  return result;
}

}  // namespace patchcore
