#include "synthetic.h"

#include <cmath>
#include <random>
#include <string>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "error.h"

namespace fs = std::filesystem;

namespace patchcore {
namespace {

// A woven fabric: two crossing sinusoidal thread patterns whose phase wanders a little, smooth
// lighting and fine noise, so no two normal images are the same but all share one texture.
cv::Mat texture(int size, const double* tint, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  std::normal_distribution<double> n(0, 1);
  const double period = 9.0 + u(rng);
  const double phase_x = u(rng) * 2 * M_PI, phase_y = u(rng) * 2 * M_PI;
  const double light_dx = (u(rng) - 0.5) * 0.3, light_dy = (u(rng) - 0.5) * 0.3;
  cv::Mat noise(size, size, CV_32F);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) noise.at<float>(y, x) = static_cast<float>(n(rng));
  cv::Mat wander;
  cv::GaussianBlur(noise, wander, cv::Size(0, 0), 6);
  cv::Mat img(size, size, CV_8UC3);
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      const double w = wander.at<float>(y, x) * 3.0;
      const double a = std::sin(2 * M_PI * x / period + phase_x + w);
      const double b = std::sin(2 * M_PI * y / period + phase_y - w);
      const bool warp = ((x / static_cast<int>(period)) + (y / static_cast<int>(period))) % 2;
      double v = 0.5 + 0.25 * (warp ? a : b) + 0.04 * noise.at<float>(y, x);
      v *= 1.0 + light_dx * (x - size / 2.0) / size + light_dy * (y - size / 2.0) / size;
      const double g = std::clamp(v, 0.0, 1.0) * 200 + 20;
      img.at<cv::Vec3b>(y, x) = cv::Vec3b(cv::saturate_cast<uchar>(g * tint[0]),
                                          cv::saturate_cast<uchar>(g * tint[1]),
                                          cv::saturate_cast<uchar>(g * tint[2]));
    }
  }
  return img;
}

// Paints one defect of the given kind; returns its 0/255 mask.
cv::Mat paint_defect(cv::Mat& img, const std::string& kind, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  const int s = img.rows;
  cv::Mat mask = cv::Mat::zeros(s, s, CV_8U);
  const cv::Point c(static_cast<int>(s * (0.2 + 0.6 * u(rng))),
                    static_cast<int>(s * (0.2 + 0.6 * u(rng))));
  if (kind == "scratch") {
    const double angle = u(rng) * M_PI, length = s * (0.25 + 0.2 * u(rng));
    const cv::Point d(static_cast<int>(std::cos(angle) * length / 2),
                      static_cast<int>(std::sin(angle) * length / 2));
    const int thickness = std::max(2, s / 60);
    cv::line(img, c - d, c + d, cv::Scalar(235, 235, 240), thickness, cv::LINE_AA);
    cv::line(mask, c - d, c + d, cv::Scalar(255), thickness + 1);
  } else if (kind == "spot") {
    const cv::Size axes(static_cast<int>(s * (0.04 + 0.04 * u(rng))),
                        static_cast<int>(s * (0.03 + 0.03 * u(rng))));
    const double angle = u(rng) * 180;
    cv::ellipse(img, c, axes, angle, 0, 360, cv::Scalar(25, 20, 20), cv::FILLED, cv::LINE_AA);
    cv::ellipse(mask, c, axes, angle, 0, 360, cv::Scalar(255), cv::FILLED);
  } else {  // stain: a soft colour change the texture keeps showing through
    const int r = static_cast<int>(s * (0.07 + 0.05 * u(rng)));
    cv::circle(mask, c, r, cv::Scalar(255), cv::FILLED);
    cv::Mat soft;
    mask.convertTo(soft, CV_32F, 1.0 / 255);
    cv::GaussianBlur(soft, soft, cv::Size(0, 0), r / 4.0);
    for (int y = 0; y < s; ++y) {
      for (int x = 0; x < s; ++x) {
        const float a = soft.at<float>(y, x) * 0.7f;
        cv::Vec3b& p = img.at<cv::Vec3b>(y, x);
        p = cv::Vec3b(cv::saturate_cast<uchar>(p[0] * (1 - a) + 40 * a),
                      cv::saturate_cast<uchar>(p[1] * (1 - a) + 150 * a),
                      cv::saturate_cast<uchar>(p[2] * (1 - a) + 60 * a));
      }
    }
  }
  return mask;
}

void write(const fs::path& file, const cv::Mat& img) {
  std::error_code ec;
  fs::create_directories(file.parent_path(), ec);
  if (ec) throw_bad_input(file.parent_path().string(), "cannot create folder: " + ec.message());
  bool ok = false;
  try {
    ok = cv::imwrite(file.string(), img);
  } catch (const cv::Exception& e) {
    throw_bad_input(file.string(), std::string("cannot write image: ") + e.what());
  }
  if (!ok) throw_bad_input(file.string(), "cannot write image");
}

std::string stem(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%03d", i);
  return buf;
}

}  // namespace

void write_synthetic_dataset(const fs::path& dir, const SyntheticParams& p) {
  std::mt19937_64 rng(p.seed);
  for (int i = 0; i < p.n_train; ++i)
    write(dir / "train" / "good" / (stem(i) + ".png"), texture(p.size, p.tint, rng));
  for (int i = 0; i < p.n_test_good; ++i)
    write(dir / "test" / "good" / (stem(i) + ".png"), texture(p.size, p.tint, rng));
  for (const std::string kind : {"scratch", "spot", "stain"}) {
    for (int i = 0; i < p.n_per_defect; ++i) {
      cv::Mat img = texture(p.size, p.tint, rng);
      cv::Mat mask = paint_defect(img, kind, rng);
      write(dir / "test" / kind / (stem(i) + ".png"), img);
      write(dir / "ground_truth" / kind / (stem(i) + "_mask.png"), mask);
    }
  }
}

}  // namespace patchcore
