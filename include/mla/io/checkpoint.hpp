// A Hugging Face model folder as one tensor store: `config.json` (exposed as JSON; the typed config
// parser lives elsewhere) and the weights, found in this order of preference:
//   1. `model.safetensors.index.json` whose `weight_map` maps tensor name -> shard file; shards are
//      opened on first use (a sharded DeepSeek-V3 has 163 files of ~4 GB, and a test that reads one
//      layer should touch only the shards holding it);
//   2. a single `model.safetensors`;
//   3. otherwise every `*.safetensors` in the folder (not recursive), whose headers are read at
//      construction to learn the names; a name in two files is an error.
// Reads route to the shard that holds the tensor and have the same meaning as SafetensorsFile's.
// FP8 weights are dequantised with their `<name>_scale_inv` tensor even if it sits in another shard;
// the block size comes from config.json `quantization_config.weight_block_size` when present,
// else 128 x 128. When config.json declares FP8 quantization (`quantization_config.quant_method`
// "fp8", as DeepSeek-V3/R1 do), read_matrix() of an FP8 weight without its scale tensor is an
// error rather than a silently unscaled matrix. Block scales must be finite and positive.
// Errors follow mla/io/safetensors.hpp (std::runtime_error for anything about the folder's
// contents, naming the tensor, the shard and the folder); the JSON files are read with
// mla/io/json.hpp's limits. All const members may be called concurrently.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mla/io/json.hpp"
#include "mla/io/safetensors.hpp"

namespace mla {
namespace io {

class Checkpoint {
 public:
  /// Where the tensor list came from (see the header comment).
  enum class Layout { kIndexed, kSingleFile, kScanned };

  static constexpr const char* kIndexFile = "model.safetensors.index.json";
  static constexpr const char* kSingleFile = "model.safetensors";
  static constexpr const char* kConfigFile = "config.json";

  /// Opens `folder`: reads config.json (optional) and the index, or the headers of the files.
  explicit Checkpoint(const std::filesystem::path& folder)
      : folder_(folder), lazy_(std::make_unique<Lazy>()) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_directory(folder_, ec)) fail(" is not a directory (or cannot be accessed)");

    const fs::path config_path = folder_ / kConfigFile;
    if (fs::exists(config_path, ec)) {
      config_ = parse_json_file(config_path);
      if (!config_.is_object()) fail(": ", kConfigFile, " is not a JSON object");
      has_config_ = true;
      read_quantization_config();
    }

    const fs::path index_path = folder_ / kIndexFile;
    if (fs::exists(index_path, ec)) {
      layout_ = Layout::kIndexed;
      load_index(index_path);
    } else if (fs::exists(folder_ / kSingleFile, ec)) {
      layout_ = Layout::kSingleFile;
      shard_files_ = {kSingleFile};
      register_file(kSingleFile);
    } else {
      layout_ = Layout::kScanned;
      std::vector<std::string> files;
      for (const fs::directory_entry& e : fs::directory_iterator(folder_, ec)) {
        if (e.path().extension() == ".safetensors" && e.is_regular_file(ec)) {
          files.push_back(e.path().filename().string());
        }
      }
      if (ec) fail(": cannot list the folder: ", ec.message());
      if (files.empty()) {
        fail(" has no ", kIndexFile, ", no ", kSingleFile, " and no *.safetensors files");
      }
      std::sort(files.begin(), files.end());
      shard_files_ = files;
      for (const std::string& f : files) register_file(f);
    }
  }

  Checkpoint(Checkpoint&&) = default;
  Checkpoint& operator=(Checkpoint&&) = default;

  const std::filesystem::path& folder() const { return folder_; }
  Layout layout() const { return layout_; }

  /// Whether config.json exists; config() is a JSON null otherwise.
  bool has_config() const { return has_config_; }
  const nlohmann::json& config() const { return config_; }

  bool contains(const std::string& name) const { return weight_map_.count(name) != 0; }
  /// Tensor names, sorted.
  std::vector<std::string> names() const { return internal::keys_of(weight_map_); }
  std::size_t size() const { return weight_map_.size(); }
  /// Shard file names relative to folder(), sorted.
  const std::vector<std::string>& shard_files() const { return shard_files_; }
  /// The shard file (relative to folder()) that holds `name`; throws if there is no such tensor.
  const std::string& shard_of(const std::string& name) const {
    const auto it = weight_map_.find(name);
    if (it == weight_map_.end()) {
      throw std::runtime_error(internal::str_cat(
          "tensor '", name, "' not found in checkpoint folder '", folder_.string(), "' (",
          weight_map_.size(), " tensors in ", shard_files_.size(), " files)"));
    }
    return it->second;
  }
  /// The shard `file` (relative to folder()), opened and validated on first use.
  const SafetensorsFile& shard(const std::string& file) const {
    std::lock_guard<std::mutex> lock(lazy_->mu);
    auto it = lazy_->open.find(file);
    if (it == lazy_->open.end()) {
      MLA_CHECK_ARG(std::binary_search(shard_files_.begin(), shard_files_.end(), file),
                    "checkpoint folder '", folder_.string(), "' has no shard '", file, "'");
      auto f = std::make_unique<SafetensorsFile>(folder_ / file);
      it = lazy_->open.emplace(file, std::move(f)).first;
    }
    return *it->second;
  }
  /// How many shards have been opened so far.
  std::size_t num_open_shards() const {
    std::lock_guard<std::mutex> lock(lazy_->mu);
    return lazy_->open.size();
  }

  /// Header entry of `name` (opens its shard).
  const TensorInfo& info(const std::string& name) const { return shard_for(name).info(name); }
  /// Path of the shard that holds `name`, for messages.
  std::string where(const std::string& name) const { return (folder_ / shard_of(name)).string(); }

  std::vector<std::uint8_t> read_bytes(const std::string& name) const {
    return shard_for(name).read_bytes(name);
  }
  template <class T>
  void read_into(const std::string& name, T* dst) const {
    shard_for(name).read_into(name, dst);
  }
  template <class T>
  std::vector<T> read(const std::string& name) const {
    return shard_for(name).template read<T>(name);
  }
  template <class T>
  std::vector<T> read(const std::string& name, const std::vector<std::int64_t>& expected_shape) const {
    return shard_for(name).template read<T>(name, expected_shape);
  }
  /// As SafetensorsFile::read_matrix; the FP8 scale tensor may live in another shard.
  template <class Scalar>
  Matrix<Scalar> read_matrix(const std::string& name, Index rows, Index cols) const {
    return internal::tensor_io::read_matrix_from<Scalar>(*this, name, rows, cols, fp8_block_,
                                                         fp8_scales_required_);
  }
  template <class Scalar>
  Vector<Scalar> read_vector(const std::string& name, Index n) const {
    return shard_for(name).template read_vector<Scalar>(name, n);
  }
  template <class T>
  T read_scalar(const std::string& name) const {
    return shard_for(name).template read_scalar<T>(name);
  }

  /// FP8 block size for read_matrix (from config.json if given there, else 128 x 128).
  Fp8BlockSize fp8_block() const { return fp8_block_; }
  void set_fp8_block(Fp8BlockSize block) {
    MLA_CHECK_ARG(block.rows > 0 && block.cols > 0, "FP8 block size [", block.rows, ", ", block.cols,
                  "] must be positive");
    fp8_block_ = block;
  }
  /// True when config.json declares FP8 quantization (`quantization_config.quant_method` "fp8"):
  /// then read_matrix() refuses an FP8 weight that has no `<name>_scale_inv` tensor.
  bool fp8_scales_required() const { return fp8_scales_required_; }

 private:
  struct Lazy {
    std::mutex mu;
    std::map<std::string, std::unique_ptr<SafetensorsFile>> open;
  };

  template <class... Args>
  [[noreturn]] void fail(const Args&... args) const {
    throw std::runtime_error(internal::str_cat("checkpoint folder '", folder_.string(), "'", args...));
  }

  nlohmann::json parse_json_file(const std::filesystem::path& path) const {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(": cannot open ", path.filename().string());
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) fail(": cannot read ", path.filename().string());
    return parse_json(text.str(), internal::str_cat("checkpoint folder '", folder_.string(), "': ",
                                                    path.filename().string()));
  }

  void read_quantization_config() {
    if (!config_.contains("quantization_config")) return;
    const nlohmann::json& q = config_["quantization_config"];
    if (!q.is_object()) return;
    const auto method = q.find("quant_method");
    fp8_scales_required_ = method != q.end() && method->is_string() &&
                           method->get_ref<const std::string&>() == "fp8";
    if (!q.contains("weight_block_size")) return;
    const nlohmann::json& b = q["weight_block_size"];
    const auto positive = [](const nlohmann::json& v) {
      return v.is_number_unsigned() && v.get<std::uint64_t>() > 0 &&
             v.get<std::uint64_t>() <= (std::uint64_t{1} << 31);
    };
    if (!b.is_array() || b.size() != 2 || !positive(b[0]) || !positive(b[1])) {
      fail(": ", kConfigFile, " quantization_config.weight_block_size must be two positive integers, got ",
           json_excerpt(b));
    }
    fp8_block_ = {b[0].get<Index>(), b[1].get<Index>()};
  }

  // A shard name from the index must stay inside the folder.
  static bool safe_relative(const std::string& file) {
    const std::filesystem::path p(file);
    if (file.empty() || p.is_absolute() || p.has_root_name() || p.has_root_directory()) return false;
    for (const std::filesystem::path& part : p) {
      if (part == "..") return false;
    }
    return p.filename() != "." && !p.filename().empty();
  }

  void load_index(const std::filesystem::path& index_path) {
    const nlohmann::json index = parse_json_file(index_path);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      fail(": ", kIndexFile, " has no 'weight_map' object");
    }
    std::set<std::string> files;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it->is_string()) {
        fail(": ", kIndexFile, " maps tensor '", it.key(), "' to a non-string ", json_excerpt(*it));
      }
      const std::string file = it->get<std::string>();
      if (!safe_relative(file)) {
        fail(": ", kIndexFile, " maps tensor '", it.key(), "' to '", file,
             "', which is not a file name inside the folder");
      }
      weight_map_[it.key()] = file;
      files.insert(file);
    }
    shard_files_.assign(files.begin(), files.end());
  }

  // Opens `file` (already in shard_files_) now and records its tensors (single-file and scanned
  // layouts).
  void register_file(const std::string& file) {
    const SafetensorsFile& f = shard(file);
    for (const std::string& name : f.names()) {
      const auto ins = weight_map_.emplace(name, file);
      if (!ins.second) {
        fail(": tensor '", name, "' is in both '", ins.first->second, "' and '", file, "'");
      }
    }
  }

  const SafetensorsFile& shard_for(const std::string& name) const {
    const std::string& file = shard_of(name);
    const SafetensorsFile* f = nullptr;
    try {
      f = &shard(file);
    } catch (const std::runtime_error& e) {
      fail(": cannot open shard '", file, "' that holds tensor '", name, "': ", e.what());
    }
    if (!f->contains(name)) {
      fail(": ", kIndexFile, " maps tensor '", name, "' to '", file, "', but that file has no such tensor");
    }
    return *f;
  }

  std::filesystem::path folder_;
  nlohmann::json config_;
  bool has_config_ = false;
  Layout layout_ = Layout::kSingleFile;
  std::map<std::string, std::string> weight_map_;  // tensor name -> shard file (relative)
  std::vector<std::string> shard_files_;           // sorted
  std::unique_ptr<Lazy> lazy_;
  Fp8BlockSize fp8_block_;
  bool fp8_scales_required_ = false;
};

}  // namespace io
}  // namespace mla
