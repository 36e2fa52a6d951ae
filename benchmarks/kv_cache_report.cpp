// kv_cache_report: KV-cache bytes per token for MLA, GQA and MHA models, read from the library's
// own cache objects (see kv_report.hpp), with the reduction MLA brings and a check against the
// published figures. Exit status 1 if a published figure does not come out.
//
//   kv_cache_report                       readable tables
//   kv_cache_report --format=markdown     (or csv, json)
//   kv_cache_report --format=csv --section=sizes   one table only (sizes, reductions, checks)
#include <exception>
#include <iostream>
#include <string>

#include "kv_report.hpp"

namespace {

void usage(std::ostream& os) {
  os << "usage: kv_cache_report [--format=table|csv|json|markdown] "
        "[--section=sizes|reductions|checks]\n"
        "Prints the KV-cache size per token (per layer and all layers) and per sequence at\n"
        "4k/32k/128k tokens for MLA/GQA/MHA model presets, with 16- and 32-bit elements,\n"
        "MLA's reduction against each GQA/MHA model, and the published figures it reproduces.\n";
}

}  // namespace

int main(int argc, char** argv) {
  mla_bench::kv::Format format = mla_bench::kv::Format::kTable;
  std::string section;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(std::cout);
      return 0;
    } else if (arg.rfind("--format=", 0) == 0) {
      const auto f = mla_bench::kv::parse_format(arg.substr(9));
      if (!f) {
        std::cerr << "kv_cache_report: unknown format '" << arg.substr(9)
                  << "' (expected table, csv, json or markdown)\n";
        return 2;
      }
      format = *f;
    } else if (arg.rfind("--section=", 0) == 0) {
      section = arg.substr(10);
      if (section != "sizes" && section != "reductions" && section != "checks") {
        std::cerr << "kv_cache_report: unknown section '" << section
                  << "' (expected sizes, reductions or checks)\n";
        return 2;
      }
    } else {
      std::cerr << "kv_cache_report: unknown argument '" << arg << "'\n";
      usage(std::cerr);
      return 2;
    }
  }
  try {
    const mla_bench::kv::Report report = mla_bench::kv::build_report();
    std::cout << mla_bench::kv::render(report, format, section);
    if (!report.all_checks_ok()) {
      std::cerr << "kv_cache_report: a published figure was not reproduced (see the checks)\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "kv_cache_report: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
