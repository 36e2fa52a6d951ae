// 03_tensor_parallel_mpi: one MLA layer split by heads across MPI processes, as DeepSeek's
// reference code and vLLM run MLA across GPUs.
//
//   mpirun -np 2 03_tensor_parallel_mpi [MODEL_DIR [LAYER]] [--prompt N] [--decode N]
//
// Rank r of S builds the head shard [r H / S, (r + 1) H / S) of the layer (mla::make_mla_shard,
// or io::load_mla_layer_shard from a Hugging Face folder): its q_b_proj / kv_b_proj rows and
// o_proj columns, the shared latent projections whole. Every rank keeps the whole latent cache
// (c_kv and k_pe are shared by all heads, which is why MLA shards by heads and not by cache),
// runs the same prefill and decode steps on the same input, and produces a partial output;
// MPI_Allreduce(SUM) of the partial outputs is the layer's output. Rank 0 also runs the full
// layer and checks the all-reduced output against it (max |y_tp - y_full| / max |y_full|
// <= 1e-4), printing the per-step time; the program exits non-zero on a mismatch.
// Without MODEL_DIR every rank generates the same random DeepSeek-V3-shaped layer (16 heads,
// kv_lora 512, rope 64) from a fixed seed.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mla/io.hpp"
#include "mla/mla.hpp"

using mla::Index;
using mla::Matrix;

namespace {

mla::MlaConfig demo_config() {
  mla::MlaConfig c = mla::presets::deepseek_v3();
  c.hidden_size = 1024;
  c.num_attention_heads = 16;
  c.q_lora_rank = 384;
  c.max_position_embeddings = 4096;
  return c;
}

// Weights N(0, 1/fan_in), norms around 1, from one seed: every rank draws the same layer.
mla::MultiHeadLatentAttention<float>::Weights demo_weights(const mla::MlaConfig& c) {
  std::mt19937 gen(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto linear = [&](Index out, Index in) {
    mla::Linear<float> l;
    l.weight.resize(out, in);
    for (Index i = 0; i < l.weight.size(); ++i) l.weight.data()[i] = nd(gen) / std::sqrt(float(in));
    return l;
  };
  auto norm = [&](Index n) {
    mla::Vector<float> v(n);
    for (Index i = 0; i < n; ++i) v[i] = 1.0f + 0.1f * nd(gen);
    return v;
  };
  const Index H = c.num_attention_heads;
  mla::MultiHeadLatentAttention<float>::Weights w;
  w.q_a_proj = linear(c.q_lora_rank, c.hidden_size);
  w.q_a_layernorm = norm(c.q_lora_rank);
  w.q_b_proj = linear(H * c.qk_head_dim(), c.q_lora_rank);
  w.kv_a_proj_with_mqa = linear(c.latent_dim(), c.hidden_size);
  w.kv_a_layernorm = norm(c.kv_lora_rank);
  w.kv_b_proj = linear(H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  w.o_proj = linear(c.hidden_size, H * c.v_head_dim);
  return w;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::string dir;
  int layer_index = 0, positional = 0;
  Index prompt = 64, decode = 16;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--prompt") && i + 1 < argc) prompt = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--decode") && i + 1 < argc) decode = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) {
      if (rank == 0)
        std::printf("usage: mpirun -np S %s [MODEL_DIR [LAYER]] [--prompt N] [--decode N]\n",
                    argv[0]);
      MPI_Finalize();
      return 0;
    } else if (positional == 0) dir = argv[i], ++positional;
    else layer_index = std::atoi(argv[i]), ++positional;
  }
  int status = 0;
  try {
    if (prompt < 1 || decode < 0) throw std::invalid_argument("--prompt must be >= 1, --decode >= 0");
    mla::MlaConfig cfg;
    mla::MultiHeadLatentAttention<float>::Weights weights;
    std::unique_ptr<mla::io::Checkpoint> ckpt;
    if (dir.empty()) {
      cfg = demo_config();
      weights = demo_weights(cfg);
    } else {
      ckpt = std::make_unique<mla::io::Checkpoint>(dir);
      if (!ckpt->has_config() || !mla::io::is_mla_config(ckpt->config()))
        throw std::runtime_error("'" + dir + "' has no MLA config.json");
      cfg = mla::io::parse_mla_config(ckpt->config());
    }
    const Index H = cfg.num_attention_heads;
    if (size > H) throw std::invalid_argument("more ranks than heads");
    const mla::HeadShard shard{H * rank / size, H * (rank + 1) / size - H * rank / size};
    const Index capacity = prompt + decode;
    typename mla::MultiHeadLatentAttention<float>::Options opt;
    opt.max_positions = std::min<std::int64_t>(cfg.max_position_embeddings, capacity);
    const auto part = ckpt ? mla::io::load_mla_layer_shard<float>(*ckpt, cfg, layer_index, shard, opt)
                           : mla::make_mla_shard<float>(cfg, weights, shard, opt);
    std::printf("rank %d/%d: heads [%lld, %lld) of %lld, latent cache %zu B/token\n", rank, size,
                (long long)shard.first_head, (long long)(shard.first_head + shard.num_heads),
                (long long)H, part.make_latent_cache(1).bytes_per_token());

    // The same input on every rank (fixed seed); rank 0 also runs the whole layer.
    std::mt19937 gen(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    Matrix<float> x(capacity, cfg.hidden_size);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = nd(gen);
    std::unique_ptr<mla::MultiHeadLatentAttention<float>> full;
    if (rank == 0)
      full = std::make_unique<mla::MultiHeadLatentAttention<float>>(
          ckpt ? mla::io::load_mla_layer<float>(*ckpt, cfg, layer_index, opt)
               : mla::MultiHeadLatentAttention<float>(cfg, weights, opt));
    auto cache = part.make_latent_cache(capacity);
    auto full_cache = full ? full->make_latent_cache(capacity) : mla::LatentCache<float>();
    mla::Workspace ws, full_ws;
    double worst = 0, t_prefill = 0, t_decode = 0;
    for (Index t0 = 0; t0 < capacity;) {
      const Index n = t0 == 0 ? prompt : 1;
      const Matrix<float> xs = x.middleRows(t0, n);
      const mla::Positions pos = mla::Positions::LinSpaced(n, t0, t0 + n - 1);
      Matrix<float> y(n, cfg.hidden_size);
      const double start = now_s();
      part.forward(xs, pos, cache, y, ws, mla::MlaPath::kAbsorbed);
      MPI_Allreduce(MPI_IN_PLACE, y.data(), int(y.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      (t0 == 0 ? t_prefill : t_decode) += now_s() - start;
      if (full) {
        Matrix<float> y_full(n, cfg.hidden_size);
        full->forward(xs, pos, full_cache, y_full, full_ws, mla::MlaPath::kAbsorbed);
        const double err = (y - y_full).cwiseAbs().maxCoeff() / y_full.cwiseAbs().maxCoeff();
        worst = std::isnan(err) ? INFINITY : std::max(worst, err);
      }
      t0 += n;
    }
    if (rank == 0) {
      std::printf("tensor-parallel over %d ranks: prefill %lld tokens %.3f s, decode %lld tokens "
                  "%.3f s (%.1f tokens/s incl. all-reduce)\n",
                  size, (long long)prompt, t_prefill, (long long)decode, t_decode,
                  decode > 0 ? double(decode) / t_decode : 0.0);
      const bool ok = worst <= 1e-4;
      std::printf("max |y_tp - y_full| / max |y_full| = %.3e: %s\n", worst,
                  ok ? "matches the full layer" : "MISMATCH");
      status = ok ? 0 : 1;
    }
  } catch (const std::exception& e) {
    // The other ranks may be waiting in a collective: abort them all rather than hang.
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  int any = 0;
  MPI_Allreduce(&status, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
