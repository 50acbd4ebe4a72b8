// patchcore: fit, evaluate and apply PatchCore anomaly detection models.
#include <iostream>
#include <new>

#include "cli.h"

int main(int argc, char** argv) {
  CLI::App app{"patchcore: PatchCore visual anomaly detection (fit on normal images, then score "
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
