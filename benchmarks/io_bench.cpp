// Opening .safetensors files whose headers list many small tensors: SafetensorsFile(path) reads
// and validates the whole header (JSON parse, duplicate keys, nesting depth, every entry, the
// offset tiling) and nothing else, so the time per tensor should stay flat from 1k to 100k
// tensors. The file is written once per size to the temp folder (outside the timing) and read
// back from the page cache on every iteration. Complexity(oN) fits time = c * N and prints the
// fit's RMS: linear growth is a small RMS.
//   build/benchmarks/io_bench                                  (all sizes)
//   build/benchmarks/io_bench --benchmark_filter=OpenSafetensors/100000
#include <benchmark/benchmark.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "mla/io/safetensors.hpp"

namespace {

namespace fs = std::filesystem;

// A file of n F32 [2] tensors named like a DeepSeek-V3 MoE checkpoint's
// (model.layers.<l>.mlp.experts.<e>.<proj>.weight), in the temp folder; removed at exit.
class HeaderFile {
 public:
  explicit HeaderFile(std::int64_t n) {
    path_ = fs::temp_directory_path() /
            ("mla_io_bench_" + std::to_string(std::random_device{}()) + "_" + std::to_string(n) +
             ".safetensors");
    const char* proj[3] = {"gate_proj", "up_proj", "down_proj"};
    const std::vector<float> value = {1.0f, 2.0f};
    mla::io::SafetensorsWriter w;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t layer = i / (256 * 3), expert = (i / 3) % 256;
      w.add("model.layers." + std::to_string(layer) + ".mlp.experts." + std::to_string(expert) +
                "." + proj[i % 3] + ".weight",
            {2}, value);
    }
    w.write(path_);
    bytes_ = fs::file_size(path_);
  }
  ~HeaderFile() {
    std::error_code ec;
    fs::remove(path_, ec);
  }
  HeaderFile(const HeaderFile&) = delete;
  HeaderFile& operator=(const HeaderFile&) = delete;
  const fs::path& path() const { return path_; }
  std::uintmax_t bytes() const { return bytes_; }

 private:
  fs::path path_;
  std::uintmax_t bytes_ = 0;
};

const HeaderFile& header_file(std::int64_t n) {
  static std::map<std::int64_t, std::unique_ptr<HeaderFile>> files;
  auto& f = files[n];
  if (!f) f = std::make_unique<HeaderFile>(n);
  return *f;
}

void BM_OpenSafetensors(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const HeaderFile& file = header_file(n);
  for (auto _ : state) {
    const mla::io::SafetensorsFile f(file.path());
    benchmark::DoNotOptimize(f.size());
    if (f.size() != static_cast<std::size_t>(n)) state.SkipWithError("wrong tensor count");
  }
  state.SetComplexityN(n);
  state.counters["tensors"] = static_cast<double>(n);
  state.counters["file_bytes"] = static_cast<double>(file.bytes());
  // Seconds per tensor (printed with an SI prefix: 2.1u = 2.1 us).
  state.counters["per_tensor"] = benchmark::Counter(
      static_cast<double>(n),
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_OpenSafetensors)
    ->ArgName("tensors")
    ->Arg(1000)
    ->Arg(10000)
    ->Arg(100000)
    ->Unit(benchmark::kMillisecond)
    ->Complexity(benchmark::oN);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("cpu_model", mla_bench::cpu_model_name());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
