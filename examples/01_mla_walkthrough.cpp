// 01_mla_walkthrough: Multi-head Latent Attention, step by step.
//
// Read this first. It builds one attention layer with DeepSeek-V3's real shapes (random weights),
// feeds it a prompt, decodes a few tokens three ways, shows that they agree, and shows what each
// way has to keep in memory per token. Run: ./01_mla_walkthrough
#include <chrono>
#include <cstdio>
#include <random>

#include "mla/mla.hpp"

using mla::Index;
using mla::Matrix;

namespace {

// Random weights with the variance of N(0, 1/fan_in) (a uniform draw is enough for a demo and
// much faster than a normal one for 187 M parameters).
struct Filler {
  std::mt19937 gen{2024};
  Matrix<float> matrix(Index rows, Index cols, double stddev) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const float s = static_cast<float>(stddev * std::sqrt(3.0));
    Matrix<float> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = s * u(gen);
    return m;
  }
  mla::Linear<float> linear(Index out, Index in) {
    return {matrix(out, in, 1.0 / std::sqrt(double(in))), {}};
  }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main() {
  // 1. The shapes. DeepSeek-V3 compresses each token's keys and values into one latent vector
  //    c_kv of kv_lora_rank = 512 values, plus a 64-value RoPE key k_pe shared by all 128 heads.
  //    Queries are compressed too (q_lora_rank = 1536), which saves weights, not cache.
  mla::MlaConfig cfg = mla::presets::deepseek_v3();
  std::printf("DeepSeek-V3 attention: hidden %lld, %lld heads, q_lora %lld, kv_lora %lld, "
              "nope %lld + rope %lld per q/k head, v %lld\n",
              (long long)cfg.hidden_size, (long long)cfg.num_attention_heads,
              (long long)cfg.q_lora_rank, (long long)cfg.kv_lora_rank,
              (long long)cfg.qk_nope_head_dim, (long long)cfg.qk_rope_head_dim,
              (long long)cfg.v_head_dim);
  std::printf("softmax scale = 192^-0.5 * yarn mscale^2 = %.6f\n\n", cfg.softmax_scale());

  // 2. The weights, under their checkpoint names. kv_b_proj [128*(128+128), 512] holds, per
  //    head, W_UK (latent -> k_nope) and W_UV (latent -> v). Real checkpoints load with
  //    mla::io::load_mla_layer<float>(folder, layer_index) from <mla/io.hpp>.
  const Index H = cfg.num_attention_heads, qk = cfg.qk_head_dim(), R = cfg.kv_lora_rank,
              P = cfg.qk_rope_head_dim, V = cfg.v_head_dim, hidden = cfg.hidden_size;
  Filler fill;
  mla::MultiHeadLatentAttention<float>::Weights w;
  w.q_a_proj = fill.linear(cfg.q_lora_rank, hidden);
  w.q_a_layernorm = mla::Vector<float>::Ones(cfg.q_lora_rank);
  w.q_b_proj = fill.linear(H * qk, cfg.q_lora_rank);
  w.kv_a_proj_with_mqa = fill.linear(R + P, hidden);
  w.kv_a_layernorm = mla::Vector<float>::Ones(R);
  w.kv_b_proj = fill.linear(H * (cfg.qk_nope_head_dim + V), R);
  w.o_proj = fill.linear(hidden, H * V);
  // 4k positions are plenty here (the cos/sin table for all 163840 would take 32 MiB: its
  // bound, kRopeTableMaxPairs, covers 131072 positions of this 64-wide RoPE).
  mla::MultiHeadLatentAttention<float> layer(cfg, std::move(w), {/*max_positions=*/4096});
  std::printf("built one layer: %.1f M attention parameters\n\n",
              (layer.weights().q_a_proj.weight.size() + layer.weights().q_b_proj.weight.size() +
               layer.weights().kv_a_proj_with_mqa.weight.size() +
               layer.weights().kv_b_proj.weight.size() + layer.weights().o_proj.weight.size()) /
                  1e6);

  // 3. Three caches for the same sequence:
  //    - LatentCache: only [c_kv | k_pe] per token -- what MLA is designed to cache.
  //      The absorbed path attends over it directly.
  //    - LatentCache again, read by the naive path, which decompresses K and V of every cached
  //      token on every step (correct, but that recomputation is what absorption removes).
  //    - KvCache: per-head k = [W_UK c_kv | k_pe] and v = W_UV c_kv, decompressed once -- as big
  //      as a multi-head attention cache, which is exactly what MLA exists to avoid.
  const Index prompt_len = 48, new_tokens = 4, capacity = prompt_len + new_tokens;
  auto latent_absorbed = layer.make_latent_cache(capacity);
  auto latent_naive = layer.make_latent_cache(capacity);
  auto decompressed = layer.make_decompressed_cache(capacity);

  // 4. Prefill the prompt. For a long prompt the naive path is cheaper (it decompresses each
  //    token once and then runs big GEMMs); MlaPath::kAuto picks by FLOP count.
  const Matrix<float> prompt = fill.matrix(prompt_len, hidden, 1.0);
  const mla::Positions prompt_pos = mla::Positions::LinSpaced(prompt_len, 0, prompt_len - 1);
  std::printf("prefill of %lld tokens: kAuto picks the %s path\n", (long long)prompt_len,
              mla::to_string(layer.choose_path(prompt_len, prompt_len)));
  mla::Workspace ws;  // scratch owned by the caller: decode steps reuse it without allocating
  Matrix<float> out(prompt_len, hidden);
  layer.forward(prompt, prompt_pos, latent_absorbed, out, ws);
  layer.forward(prompt, prompt_pos, latent_naive, out, ws);
  layer.forward(prompt, prompt_pos, decompressed, out, ws);

  // 5. Decode one token at a time on each path and compare the outputs.
  //    Absorbed: q_lat = W_UK^T q_nope per head, scores = q_lat . c_kv + q_pe . k_pe,
  //    o_lat = sum p c_kv, o = W_UV o_lat. Same numbers, reassociated.
  double max_diff_naive = 0, max_diff_cached = 0, t_abs = 0, t_naive = 0, t_cached = 0;
  for (Index i = 0; i < new_tokens; ++i) {
    const Matrix<float> x = fill.matrix(1, hidden, 1.0);
    const mla::Positions pos = mla::Positions::Constant(1, prompt_len + i);
    Matrix<float> y_abs(1, hidden), y_naive(1, hidden), y_cached(1, hidden);
    auto t0 = std::chrono::steady_clock::now();
    layer.forward(x, pos, latent_absorbed, y_abs, ws, mla::MlaPath::kAbsorbed);
    t_abs += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    layer.forward(x, pos, latent_naive, y_naive, ws, mla::MlaPath::kNaive);
    t_naive += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    layer.forward(x, pos, decompressed, y_cached, ws);
    t_cached += seconds_since(t0);
    const double scale = y_naive.cwiseAbs().maxCoeff();
    max_diff_naive = std::max(max_diff_naive, (y_abs - y_naive).cwiseAbs().maxCoeff() / scale);
    max_diff_cached =
        std::max(max_diff_cached, (y_abs - y_cached).cwiseAbs().maxCoeff() / scale);
  }
  std::printf("decoded %lld tokens; absorbed vs naive-recompute max rel diff %.2e, vs "
              "naive-decompressed-cache %.2e\n",
              (long long)new_tokens, max_diff_naive, max_diff_cached);
  std::printf("(whole layer per token at context %lld: absorbed %.1f ms, naive recompute %.1f ms, "
              "naive cached %.1f ms -- projections dominate at this short context;\n"
              " see decode_bench for the attention core at 1k-32k tokens)\n\n",
              (long long)capacity, 1e3 * t_abs / new_tokens, 1e3 * t_naive / new_tokens,
              1e3 * t_cached / new_tokens);

  // 6. What each design keeps per token per layer (bf16 elements, as served).
  const auto bf16_latent = layer.make_latent_cache<mla::bfloat16>(1);
  const auto bf16_decompressed = layer.make_decompressed_cache<mla::bfloat16>(1);
  const mla::AttentionConfig qwen = mla::presets::qwen2_5_72b(), mha = mla::presets::mha_128x128();
  const mla::KvCache<mla::bfloat16> bf16_gqa(qwen.num_key_value_heads, qwen.head_dim,
                                             qwen.head_dim, 1);
  const mla::KvCache<mla::bfloat16> bf16_mha(mha.num_key_value_heads, mha.head_dim, mha.head_dim, 1);
  const double latent = double(bf16_latent.bytes_per_token());
  std::printf("KV cache per token per layer (bf16):\n");
  std::printf("  MLA latent [c_kv | k_pe]            %7zu B  (512 + 64 values)\n",
              bf16_latent.bytes_per_token());
  std::printf("  MLA decompressed per-head K/V       %7zu B  (%.1fx the latent)\n",
              bf16_decompressed.bytes_per_token(), bf16_decompressed.bytes_per_token() / latent);
  std::printf("  GQA, Qwen2.5-72B (8 KV heads x 128) %7zu B  (latent is %.2f%% smaller)\n",
              bf16_gqa.bytes_per_token(), 100.0 * (1.0 - latent / bf16_gqa.bytes_per_token()));
  std::printf("  MHA, 128 heads x 128                %7zu B  (latent is %.2f%% smaller)\n",
              bf16_mha.bytes_per_token(), 100.0 * (1.0 - latent / bf16_mha.bytes_per_token()));
  return max_diff_naive < 1e-3 && max_diff_cached < 1e-3 ? 0 : 1;
}
