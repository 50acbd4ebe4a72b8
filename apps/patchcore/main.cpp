// patchcore: fit, evaluate and apply PatchCore anomaly detection models.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <new>

#include "cli.h"

namespace {

// OpenMP threads waiting for work spin (libgomp polls ~300,000 times) before they sleep. Beside
// a second process on the same cores (two predictions at once, ctest -j2) the spinning threads
// took the cores from the working ones: one CLI test ran 1.8 s alone and 47 s beside a copy of
// itself, 2.1 s with OMP_WAIT_POLICY=passive, and single runs were no slower with it
// (docs/benchmarks.md). libgomp reads the variable once, as it loads, so the program sets it
// and starts itself again, unless the user chose a policy.
void prefer_passive_openmp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) {
    return;
  }
  if (setenv("OMP_WAIT_POLICY", "passive", 0) != 0) return;
  execv("/proc/self/exe", argv);  // returns only when it fails: then run as we are
}

}  // namespace

int main(int argc, char** argv) {
  prefer_passive_openmp_wait(argv);
  CLI::App app{
      "patchcore: PatchCore visual anomaly detection (fit on normal images, then score "
      "new ones with a heatmap)"};
  app.set_version_flag("--version", std::string("patchcore ") + PATCHCORE_VERSION);
  app.require_subcommand(1);
  patchcore::cli::add_fit(app);
  patchcore::cli::add_eval(app);
  patchcore::cli::add_predict(app);
  patchcore::cli::add_info(app);
  patchcore::cli::add_demo(app);
  patchcore::cli::add_bench(app);
  patchcore::cli::add_import(app);
  patchcore::cli::add_features(app);
  patchcore::cli::add_serve(app);
  patchcore::cli::add_update(app);
  patchcore::cli::add_merge(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const patchcore::Error& e) {
    std::cerr << "patchcore: error: " << e.what() << "\n";
    return static_cast<int>(e.kind());
  } catch (const std::bad_alloc&) {
    std::cerr << "patchcore: error: out of memory; try a smaller --coreset-ratio, --image-size "
                 "or fewer training images\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "patchcore: internal error: " << e.what() << "\n";
    return 1;
  }
  return patchcore::cli::exit_code();
}
