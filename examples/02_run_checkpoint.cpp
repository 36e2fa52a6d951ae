// 02_run_checkpoint: load one layer's attention from a Hugging Face model folder and run it.
//
//   02_run_checkpoint [MODEL_DIR [LAYER]] [--prompt N] [--decode N] [--bf16-cache] [--amx]
//
// MODEL_DIR holds config.json and *.safetensors (one file, or shards listed in
// model.safetensors.index.json; f32/f16/bf16 weights, or DeepSeek-V3/R1's FP8 e4m3 weights with
// 128x128 `weight_scale_inv` block scales, dequantised at load). MLA models (kv_lora_rank in the
// config) get a latent cache and absorbed decode; MHA/GQA models a KV cache. With no MODEL_DIR
// the program first writes a small DeepSeek-V3-shaped model (two shards, FP8 projections) to a
// temporary folder, so the whole loading path runs without downloading anything.
// Prints the cache bytes and the prefill / decode throughput of that one layer. --bf16-cache
// stores the cache in bfloat16 (half the bytes); --amx (implies it) runs attention over it on
// the AMX tiles of Sapphire Rapids and later (Options::attention_path = KernelPath::kAmx, which
// rounds the query and the softmax weights to bf16), where the library was built for them.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "mla/io.hpp"
#include "mla/mla.hpp"

namespace fs = std::filesystem;
using mla::Index;
using mla::Matrix;

namespace {

// Nearest FP8 e4m3 code of v (a search over the 256 decoded values: fine for a demo model).
std::uint8_t encode_e4m3(float v) {
  std::uint8_t best = 0;
  float best_err = INFINITY;
  for (int c = 0; c < 256; ++c) {
    const float d = mla::io::fp8_e4m3_to_float(static_cast<std::uint8_t>(c));
    if (std::isnan(d)) continue;
    const float err = std::abs(d - v);
    if (err < best_err) best_err = err, best = static_cast<std::uint8_t>(c);
  }
  return best;
}

// Adds W as FP8 e4m3 with 128x128 block scales (scale = block max / 448), as DeepSeek ships it.
void add_fp8(mla::io::SafetensorsWriter& w, const std::string& name, const Matrix<float>& m) {
  const Index b = 128, sr = (m.rows() + b - 1) / b, sc = (m.cols() + b - 1) / b;
  Matrix<float> scale(sr, sc);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(m.size()));
  for (Index i = 0; i < sr; ++i)
    for (Index j = 0; j < sc; ++j) {
      const auto blk = m.block(i * b, j * b, std::min(b, m.rows() - i * b), std::min(b, m.cols() - j * b));
      scale(i, j) = std::max(blk.cwiseAbs().maxCoeff(), 1e-12f) / 448.0f;
    }
  for (Index r = 0; r < m.rows(); ++r)
    for (Index c = 0; c < m.cols(); ++c)
      codes[static_cast<std::size_t>(r * m.cols() + c)] = encode_e4m3(m(r, c) / scale(r / b, c / b));
  w.add_raw(name, mla::io::Dtype::kF8E4M3, {m.rows(), m.cols()}, codes.data(), codes.size());
  w.add_eigen(name + "_scale_inv", scale);
}

// Writes a small DeepSeek-V3-shaped model (one layer's attention) into `dir`, in two shards.
void write_demo_model(const fs::path& dir) {
  fs::create_directories(dir);
  const Index hidden = 1024, H = 16, q_lora = 384, R = 256, N = 64, P = 32, V = 64;
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](Index r, Index c) {
    Matrix<float> m(r, c);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = nd(gen) / std::sqrt(float(c));
    return m;
  };
  auto ones_ish = [&](Index n) {
    mla::Vector<mla::bfloat16> v(n);
    for (Index i = 0; i < n; ++i) v[i] = mla::bfloat16(1.0f + 0.1f * nd(gen));
    return v;
  };
  const std::string p = "model.layers.0.self_attn.";
  mla::io::SafetensorsWriter a, b;
  a.add_eigen(p + "q_a_proj.weight", Matrix<mla::bfloat16>(rnd(q_lora, hidden).cast<mla::bfloat16>()));
  a.add_eigen(p + "q_a_layernorm.weight", ones_ish(q_lora));
  add_fp8(a, p + "q_b_proj.weight", rnd(H * (N + P), q_lora));
  a.add_eigen(p + "kv_a_proj_with_mqa.weight",
              Matrix<mla::bfloat16>(rnd(R + P, hidden).cast<mla::bfloat16>()));
  b.add_eigen(p + "kv_a_layernorm.weight", ones_ish(R));
  add_fp8(b, p + "kv_b_proj.weight", rnd(H * (N + V), R));
  add_fp8(b, p + "o_proj.weight", rnd(hidden, H * V));
  a.write(dir / "model-00001-of-00002.safetensors");
  b.write(dir / "model-00002-of-00002.safetensors");
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  for (const auto& [file, shard] : {std::pair{"model-00001-of-00002.safetensors", &a},
                                    std::pair{"model-00002-of-00002.safetensors", &b}}) {
    const auto f = mla::io::SafetensorsFile::from_bytes(shard->to_bytes());
    for (const auto& name : f.names()) index["weight_map"][name] = file;
  }
  std::ofstream(dir / "model.safetensors.index.json") << index.dump(2);
  const nlohmann::json config = {
      {"model_type", "deepseek_v3"}, {"hidden_size", hidden}, {"num_attention_heads", H},
      {"num_key_value_heads", H}, {"q_lora_rank", q_lora}, {"kv_lora_rank", R},
      {"qk_nope_head_dim", N}, {"qk_rope_head_dim", P}, {"v_head_dim", V},
      {"num_hidden_layers", 1}, {"max_position_embeddings", 16384}, {"rope_theta", 10000.0},
      {"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096},
                        {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}}},
      {"quantization_config", {{"quant_method", "fp8"}, {"fmt", "e4m3"},
                               {"weight_block_size", {128, 128}}}}};
  std::ofstream(dir / "config.json") << config.dump(2);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Prefill `prompt` tokens, then decode `decode` tokens one by one; prints throughput.
template <class Layer, class Cache>
void run(const Layer& layer, Cache& cache, Index hidden, Index prompt, Index decode) {
  std::mt19937 gen(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Matrix<float> x(prompt, hidden), y(prompt, hidden), x1(1, hidden), y1(1, hidden);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = nd(gen);
  mla::Workspace ws;
  double t0 = now_s();
  layer.forward(x, mla::Positions::LinSpaced(prompt, 0, prompt - 1), cache, y, ws);
  const double t_prefill = now_s() - t0;
  t0 = now_s();
  for (Index t = 0; t < decode; ++t) {
    for (Index i = 0; i < hidden; ++i) x1(0, i) = nd(gen);
    layer.forward(x1, mla::Positions::Constant(1, prompt + t), cache, y1, ws);
  }
  const double t_decode = now_s() - t0;
  std::printf("prefill: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)prompt, t_prefill,
              prompt / t_prefill);
  std::printf("decode:  %lld tokens in %.3f s (%.1f tokens/s, one layer, batch 1)\n",
              (long long)decode, t_decode, decode / t_decode);
  std::printf("output finite: %s\n", y.allFinite() && y1.allFinite() ? "yes" : "NO");
}

// The same with a bf16 cache (latent or KV), naming the attention path it runs.
template <class Layer, class Cache>
void run_bf16(const Layer& layer, Cache cache, mla::kernels::KernelPath path, Index hidden,
              Index prompt, Index decode) {
  std::printf("bf16 cache, %zu B/token/layer, attention path %s\n", cache.bytes_per_token(),
              mla::kernels::path_name(path));
  run(layer, cache, hidden, prompt, decode);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  int layer_index = 0;
  Index prompt = 256, decode = 32;
  bool bf16_cache = false, amx = false;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--prompt") && i + 1 < argc) prompt = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--decode") && i + 1 < argc) decode = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--bf16-cache")) bf16_cache = true;
    else if (!std::strcmp(argv[i], "--amx")) amx = bf16_cache = true;
    else if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) {
      std::printf("usage: %s [MODEL_DIR [LAYER]] [--prompt N] [--decode N] [--bf16-cache] [--amx]\n",
                  argv[0]);
      return 0;
    } else if (positional == 0) dir = argv[i], ++positional;
    else layer_index = std::atoi(argv[i]), ++positional;
  }
  const mla::kernels::KernelPath path = amx ? mla::kernels::KernelPath::kAmx : mla::kernels::KernelPath::kAuto;
  if (prompt < 1 || decode < 0) {
    std::fprintf(stderr, "--prompt must be >= 1 and --decode >= 0\n");
    return 2;
  }
  try {
    if (dir.empty()) {
      dir = (fs::temp_directory_path() / "mla_demo_model").string();
      std::printf("no model folder given: writing a small DeepSeek-V3-shaped model (2 shards, FP8 "
                  "q_b/kv_b/o projections) to %s\n",
                  dir.c_str());
      write_demo_model(dir);
    }
    const mla::io::Checkpoint ckpt(dir);
    if (!ckpt.has_config()) throw std::runtime_error("'" + dir + "' has no config.json");
    std::printf("model folder %s: %zu tensors in %zu file(s), layer %d\n", dir.c_str(), ckpt.size(),
                ckpt.shard_files().size(), layer_index);
    const Index capacity = prompt + decode;
    if (mla::io::is_mla_config(ckpt.config())) {
      const mla::MlaConfig cfg = mla::io::parse_mla_config(ckpt.config());
      // Options: RoPE table length, projection weight format, attention kernel path.
      const auto layer = mla::io::load_mla_layer<float>(
          ckpt, cfg, layer_index,
          {std::min<std::int64_t>(cfg.max_position_embeddings, capacity), mla::WeightFormat::kAsLoaded, path});
      if (bf16_cache) {
        run_bf16(layer, layer.make_latent_cache<mla::bfloat16>(capacity), path, cfg.hidden_size,
                 prompt, decode);
        return 0;
      }
      auto cache = layer.make_latent_cache(capacity);
      std::printf("MLA: %lld heads, kv_lora %lld + rope %lld -> latent cache %zu B/token/layer "
                  "(a decompressed cache would need %zu)\n",
                  (long long)cfg.num_attention_heads, (long long)cfg.kv_lora_rank,
                  (long long)cfg.qk_rope_head_dim, cache.bytes_per_token(),
                  layer.make_decompressed_cache(1).bytes_per_token());
      std::printf("cache allocated for %lld tokens: %zu bytes\n", (long long)capacity,
                  cache.bytes_allocated());
      run(layer, cache, cfg.hidden_size, prompt, decode);
    } else {
      const mla::AttentionConfig cfg = mla::io::parse_attention_config(ckpt.config());
      const auto layer = mla::io::load_gqa_layer<float>(
          ckpt, cfg, layer_index,
          {std::min<std::int64_t>(cfg.max_position_embeddings, capacity), mla::WeightFormat::kAsLoaded, path});
      if (bf16_cache) {
        run_bf16(layer, layer.make_cache<mla::bfloat16>(capacity), path, cfg.hidden_size, prompt,
                 decode);
        return 0;
      }
      auto cache = layer.make_cache(capacity);
      std::printf("GQA: %lld query heads over %lld KV heads of %lld -> KV cache %zu B/token/layer\n",
                  (long long)cfg.num_attention_heads, (long long)cfg.num_key_value_heads,
                  (long long)cfg.head_dim, cache.bytes_per_token());
      run(layer, cache, cfg.hidden_size, prompt, decode);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
