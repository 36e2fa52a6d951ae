// hf_layer_check: checks mla's attention layers against Hugging Face reference case folders.
//
//   hf_layer_check [--double] CASE_DIR [CASE_DIR ...]
//
// Each CASE_DIR holds config.json, model.safetensors (weights under
// model.layers.0.self_attn.*) and io*.safetensors (inputs, outputs, intermediates), as in
// shared/reference/README.md. For every case it runs the checks of
// mla/conformance/hf_reference.hpp (RoPE frequencies, softmax scale, intermediates, prefill and
// prefill+decode outputs on every path), prints the max abs / rel error per case and the worst
// check, and exits non-zero if any case mismatches or cannot be read.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "mla/conformance/hf_reference.hpp"

template <class Scalar>
bool check(const std::string& dir, bool verbose) {
  try {
    const mla::conformance::CaseResult r = mla::conformance::check_reference_case<Scalar>(dir);
    double max_abs = 0, max_rel = 0;
    for (const auto& c : r.checks) {
      max_abs = std::max(max_abs, c.max_abs_err);
      max_rel = std::max(max_rel, c.rel_err);
      if (verbose || !c.ok())
        std::printf("    %-4s %-22s %-36s abs %.3e rel %.3e (tol %.1e)\n", c.ok() ? "ok" : "FAIL",
                    c.io_file.c_str(), c.what.c_str(), c.max_abs_err, c.rel_err, c.tolerance);
    }
    const auto* w = r.worst();
    std::printf("%-4s %s [%s, %zu checks] max abs err %.3e, max rel err %.3e (worst: %s %s)\n",
                r.ok() ? "PASS" : "FAIL", dir.c_str(), r.kind.c_str(), r.checks.size(), max_abs,
                max_rel, w ? w->io_file.c_str() : "-", w ? w->what.c_str() : "-");
    return r.ok();
  } catch (const std::exception& e) {
    std::printf("FAIL %s: cannot check this case: %s\n", dir.c_str(), e.what());
    return false;
  }
}

int main(int argc, char** argv) {
  bool use_double = false, verbose = false;
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--double")) use_double = true;
    else if (!std::strcmp(argv[i], "-v") || !std::strcmp(argv[i], "--verbose")) verbose = true;
    else if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) dirs.clear(), argc = 0;
    else dirs.push_back(argv[i]);
  }
  if (dirs.empty()) {
    std::fprintf(stderr,
                 "usage: hf_layer_check [--double] [-v] CASE_DIR [CASE_DIR ...]\n"
                 "  checks mla layers against Hugging Face reference case folders\n"
                 "  (config.json + model.safetensors + io*.safetensors)\n");
    return 2;
  }
  int failed = 0;
  for (const auto& d : dirs) failed += !(use_double ? check<double>(d, verbose) : check<float>(d, verbose));
  std::printf("%zu case(s), %d failed (%s)\n", dirs.size(), failed, use_double ? "double" : "float");
  return failed ? 1 : 0;
}
