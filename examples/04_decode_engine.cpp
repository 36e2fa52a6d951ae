// The decode engine as a serving engine drives it: a batch of sequences of different lengths,
// each with its own paged cache in one shared block pool, decoded step after step through a
// stack of layers. Per step the engine's attention is planned once (DecodePlan: sequence lengths,
// new-token counts, threads -> balanced split-KV work) and run once per layer (run_decode: no
// allocation), as FlashMLA's get_mla_metadata / flash_mla_with_kvcache and FlashInfer's plan /
// run are used.
//
// The projections around the attention (W_UK folded into the query, W_UV applied to the output)
// are the layer's (layers/batched_decode.hpp does them for a whole batch): this example feeds
// random absorbed queries straight to the attention core, and checks every output against the
// double-precision reference loops over the same rows laid out contiguously.
//
//   04_decode_engine [--layers N] [--steps N] [--threads N]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <mla/mla.hpp>
#include <mla/reference/attention.hpp>

namespace {

using mla::Index;

constexpr Index kHeads = 16, kKvLora = 128, kRope = 32, kBlock = 64;

struct Args {
  int layers = 4, steps = 3, threads = 2;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (flag == "--layers") a.layers = value;
    else if (flag == "--steps") a.steps = value;
    else if (flag == "--threads") a.threads = value;
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  const std::vector<Index> prompt{900, 40, 2500, 300};  // tokens already cached per sequence
  const Index batch = Index(prompt.size()), W = kKvLora + kRope;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);

  // One pool per layer (a layer's cache rows), one paged cache per (layer, sequence).
  std::vector<std::unique_ptr<mla::LatentBlockPool<mla::bfloat16>>> pools;
  std::vector<std::vector<mla::PagedLatentCache<mla::bfloat16>>> caches(std::size_t(args.layers));
  for (int l = 0; l < args.layers; ++l) {
    pools.push_back(std::make_unique<mla::LatentBlockPool<mla::bfloat16>>(kKvLora, kRope, 128, kBlock));
    for (Index b = 0; b < batch; ++b) {
      caches[std::size_t(l)].emplace_back(*pools.back());
      auto& c = caches[std::size_t(l)].back();
      c.reserve(prompt[std::size_t(b)] + args.steps);  // blocks for the whole run, up front
      std::vector<float> rows(std::size_t(prompt[std::size_t(b)] * W));
      for (float& x : rows) x = u(rng);
      c.append(rows.data(), W, prompt[std::size_t(b)]);
    }
  }

  mla::ThreadPool pool(args.threads);
  mla::kernels::DecodePlan plan;
  mla::kernels::DecodeWorkspace ws;
  std::vector<float> q_lat(std::size_t(batch * kHeads * kKvLora)), q_pe(std::size_t(batch * kHeads * kRope));
  const std::size_t B = prompt.size();
  std::vector<float> o_lat(q_lat.size());
  std::vector<float> ref(static_cast<std::size_t>(kHeads * kKvLora));
  std::vector<float> new_row(static_cast<std::size_t>(W));
  std::vector<mla::kernels::DecodeSequence<mla::bfloat16>> seqs(B);
  const float scale = 1.0f / std::sqrt(float(kKvLora / 4 + kRope));
  double worst = 0.0;

  for (int step = 0; step < args.steps; ++step) {
    // Each layer appends one new row per sequence (its new token's latent row) before attending.
    // Plan once: every layer has the same lengths this step.
    std::vector<Index> q_lens(B, 1), lens(B);
    for (Index b = 0; b < batch; ++b) lens[std::size_t(b)] = caches[0][std::size_t(b)].size() + 1;
    plan.plan(kHeads, kKvLora, kRope, q_lens.data(), lens.data(), batch, mla::num_threads(&pool));
    ws.reserve(plan);  // the only allocation of the step (none once the batch stops growing)

    for (int l = 0; l < args.layers; ++l) {
      for (Index b = 0; b < batch; ++b) {
        auto& c = caches[std::size_t(l)][std::size_t(b)];
        for (float& x : new_row) x = u(rng);
        c.append(new_row.data(), W, 1);
        auto& s = seqs[std::size_t(b)];
        s.q_len = 1;
        s.q_lat = q_lat.data() + b * kHeads * kKvLora;
        s.q_pe = q_pe.data() + b * kHeads * kRope;
        s.cache = c.rows();
        s.o_lat = o_lat.data() + b * kHeads * kKvLora;
      }
      for (float& x : q_lat) x = u(rng);
      for (float& x : q_pe) x = u(rng);
      mla::kernels::run_decode(plan, seqs.data(), batch, scale, ws, &pool);

      // Check: the double reference over the same rows, copied out contiguously.
      for (Index b = 0; b < batch; ++b) {
        const auto& c = caches[std::size_t(l)][std::size_t(b)];
        std::vector<mla::bfloat16> rows(std::size_t(c.size() * W));
        for (Index t = 0; t < c.size(); ++t) std::memcpy(&rows[std::size_t(t * W)], c.row(t), sizeof(mla::bfloat16) * std::size_t(W));
        mla::kernels::AbsorbedAttentionShape shape{1, kHeads, kKvLora, kRope, c.size(), W};
        mla::reference::absorbed_attention(shape, seqs[std::size_t(b)].q_lat, seqs[std::size_t(b)].q_pe,
                                           rows.data(), scale, ref.data(), nullptr);
        double err = 0.0, mag = 0.0;
        for (std::size_t i = 0; i < ref.size(); ++i) {
          err = std::fmax(err, std::fabs(double(seqs[std::size_t(b)].o_lat[i]) - ref[i]));
          mag = std::fmax(mag, std::fabs(double(ref[i])));
        }
        worst = std::fmax(worst, err / mag);
      }
    }
    std::printf("step %d: %lld sequences, lengths", step, static_cast<long long>(batch));
    for (Index len : lens) std::printf(" %lld", static_cast<long long>(len));
    std::printf("; %lld parts, %lld sequences split across threads, %d layers run\n",
                static_cast<long long>(plan.num_parts()),
                static_cast<long long>(plan.num_split_units()), args.layers);
  }
  std::printf("largest error against the double reference: %.2e (%s)\n", worst,
              worst < 1e-4 ? "ok" : "FAILED");
  return worst < 1e-4 ? 0 : 1;
}
