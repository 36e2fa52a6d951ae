// libFuzzer entry point for SafetensorsFile. Any input must either parse or throw
// std::runtime_error; every other outcome (crash, sanitizer report, another exception type such
// as nlohmann::json::exception or std::bad_alloc, a leak) is a bug. Files that parse are read back
// through every conversion path, including FP8 block dequantisation.
//
// Build and run (not part of the CMake test glob):
//   clang++ -fsanitize=fuzzer,address,undefined -std=c++17 -O1 -g -I include -I/usr/include/eigen3 \
//       tests/fuzz/fuzz_safetensors.cpp -o fuzz_safetensors
//   ./fuzz_safetensors -max_total_time=60 -rss_limit_mb=2048 CORPUS_DIR
// A seed corpus can be made from the reference files and SafetensorsWriter output.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mla/io/safetensors.hpp"

namespace {

template <class T>
void try_read(const mla::io::SafetensorsFile& f, const std::string& name) {
  try {
    const std::vector<T> v = f.read<T>(name);
    if (v.size() != static_cast<std::size_t>(f.info(name).numel())) __builtin_trap();
  } catch (const std::runtime_error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    mla::io::SafetensorsFile f = mla::io::SafetensorsFile::from_bytes(data, size, "fuzz");
    // Small blocks so the scale shapes of fuzzed files can match.
    f.set_fp8_block({1 + static_cast<mla::Index>(size % 3), 1 + static_cast<mla::Index>(size % 5)});
    for (const std::string& name : f.names()) {
      const mla::io::TensorInfo& ti = f.info(name);
      if (ti.end > size || ti.begin > ti.end) __builtin_trap();  // validated ranges only
      try_read<float>(f, name);
      try_read<double>(f, name);
      try_read<Eigen::bfloat16>(f, name);
      try_read<Eigen::half>(f, name);
      try_read<std::int64_t>(f, name);
      try_read<std::uint8_t>(f, name);
      try {
        if (ti.shape.size() == 2) (void)f.read_matrix<float>(name, ti.shape[0], ti.shape[1]);
        if (ti.shape.size() == 1) (void)f.read_vector<double>(name, ti.shape[0]);
        if (ti.shape.empty()) (void)f.read_scalar<double>(name);
      } catch (const std::runtime_error&) {
      }
    }
    (void)f.metadata();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
