#!/usr/bin/env python3
"""Times PyTorch on the decode shapes of decode_bench and prints them beside our results.

    decode_bench --benchmark_out=decode.json --benchmark_out_format=json
    python3 benchmarks/compare_pytorch.py decode.json [--threads 1] [--contexts 1024,4096]

PyTorch on the CPU, float32, torch.set_num_threads(--threads), one decode step (batch 1, one new
token, one layer) at each context length L (L cached tokens + the new one, as decode_bench):

  core (torch.nn.functional.scaled_dot_product_attention, query already projected)
    mha                  q [1,128,1,128]  K,V [1,128,L+1,128]
    gqa                  q [1,64,1,128]   K,V [1,8,L+1,128]            (enable_gqa)
    mla_naive_cached     q [1,128,1,192]  K [1,128,L+1,192] V [..,128]
    mla_naive_recompute  K/V = c_kv W_kv_b^T from the latent cache, then SDPA as above
    mla_absorbed         the 128 heads as 128 query rows over the latent rows [L+1, 576], V the
                         first 512 columns (one SDPA call, no mask: FlashMLA's formulation)
  layer (Hugging Face transformers DeepseekV3Attention, DeepSeek-V3 dims, random weights, sdpa)
    one forward() of one token over a DynamicCache holding L tokens, cropped back after each step.
    Recent transformers cache the latent and expand K/V every step (our mla_naive_recompute);
    older ones cache the expanded K/V (our mla_naive_cached): the script detects which.

Each row shows our median time from the JSON (decode_bench's <design>/<part>/f32/L:<L>/threads:<n>),
PyTorch's median, and torch/ours (> 1: ours is faster). Without torch and transformers it prints
how to install them and exits 0:  pip install torch transformers
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_decode import load_results  # noqa: E402  (same folder)

H, R, P, N, V = 128, 512, 64, 128, 128  # DeepSeek-V3 attention
SCALE_V3 = (N + P) ** -0.5


def time_step(fn, min_time=0.5, min_iters=3, max_iters=200):
    """Median wall time of fn() in ms, after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or (time.perf_counter() - start < min_time
                                     and len(times) < max_iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def core_cases(torch, L):
    """{design: callable running one attention step} at context L (L+1 rows attended)."""
    F = torch.nn.functional
    lc = L + 1
    g = torch.Generator().manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    cases = {}
    q, k, v = rnd(1, 128, 1, 128), rnd(1, 128, lc, 128), rnd(1, 128, lc, 128)
    cases["mha"] = lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)
    q, k, v = rnd(1, 64, 1, 128), rnd(1, 8, lc, 128), rnd(1, 8, lc, 128)
    cases["gqa"] = lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    q, k, v = rnd(1, H, 1, N + P), rnd(1, H, lc, N + P), rnd(1, H, lc, V)
    cases["mla_naive_cached"] = lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
        q, k, v, scale=SCALE_V3)
    latent = rnd(lc, R + P)
    q_abs = rnd(1, 1, H, R + P)
    cases["mla_absorbed"] = lambda q=q_abs, c=latent: F.scaled_dot_product_attention(
        q, c.view(1, 1, lc, R + P), c[:, :R].view(1, 1, lc, R), scale=SCALE_V3)
    w_kv_b = rnd(H * (N + V), R) * R ** -0.5
    q_naive = rnd(1, H, 1, N + P)

    def naive_recompute(q=q_naive, c=latent, w=w_kv_b):
        kv = (c[:, :R] @ w.T).view(lc, H, N + V).transpose(0, 1)  # [H, L+1, N+V]
        k = torch.cat([kv[..., :N], c[:, R:].expand(H, lc, P)], dim=-1)
        return F.scaled_dot_product_attention(q, k.unsqueeze(0), kv[..., N:].unsqueeze(0),
                                              scale=SCALE_V3)
    cases["mla_naive_recompute"] = naive_recompute
    return cases


class HfLayer:
    """transformers' DeepseekV3Attention with random weights and a cache of L random tokens."""

    def __init__(self, torch, transformers, max_pos):
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m
        self.torch = torch
        cfg = transformers.DeepseekV3Config(max_position_embeddings=max_pos)
        cfg._attn_implementation = "sdpa"
        self.cfg = cfg
        with torch.device("meta"):
            attn = m.DeepseekV3Attention(cfg, layer_idx=0)
        attn = attn.to_empty(device="cpu").eval()
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, p in attn.named_parameters():
                if "layernorm" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
        self.attn = attn
        self.rope = m.DeepseekV3RotaryEmbedding(cfg)
        self.x = torch.randn(1, 1, cfg.hidden_size, generator=g)
        self.layout = self._cache_layout()

    def _cache_layout(self):
        from transformers import DynamicCache
        cache = DynamicCache(config=self.cfg)
        self._step(cache, 0)
        keys = cache.layers[0].keys
        return "latent" if keys.shape[-1] == self.cfg.kv_lora_rank else "decompressed"

    def _step(self, cache, pos):
        torch = self.torch
        position_ids = torch.tensor([[pos]])
        cos_sin = self.rope(self.x, position_ids)
        return self.attn(self.x, cos_sin, None, past_key_values=cache,
                         cache_position=torch.tensor([pos]))[0]

    def make_step(self, L):
        from transformers import DynamicCache
        torch = self.torch
        cache = DynamicCache(config=self.cfg)
        g = torch.Generator().manual_seed(3)
        if self.layout == "latent":
            k = torch.randn(1, 1, L, R, generator=g)
            v = torch.randn(1, 1, L, P, generator=g)
        else:
            k = torch.randn(1, H, L, N + P, generator=g)
            v = torch.randn(1, H, L, V, generator=g)
        cache.update(k, v, 0)
        assert cache.get_seq_length() == L

        def step():
            out = self._step(cache, L)
            cache.crop(-1)  # drop the new token (negative = tokens to remove, in 4.x and 5.x)
            return out
        return step


def ours_ms(results, design, part, L, threads):
    for r in results.values():
        if (r.design, r.part, r.type, r.length, r.threads) == (design, part, "f32", L, threads):
            return r.median_ms
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", help="decode_bench JSON output (optional)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--contexts", default=None,
                    help="context lengths, e.g. 1024,4096 (default: those in the JSON, else "
                         "1024,4096)")
    ap.add_argument("--max-naive-context", type=int, default=4096,
                    help="skip naive recompute (core and HF layer) above this L (default 4096)")
    ap.add_argument("--no-layer", action="store_true", help="skip the HF DeepseekV3Attention rows")
    args = ap.parse_args(argv)

    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"compare_pytorch.py: PyTorch comparison skipped ({e.name} is not installed).\n"
              "Install both with:  pip install torch transformers\n"
              "then run:           python3 benchmarks/compare_pytorch.py decode.json")
        return 0

    results = {}
    if args.json:
        _, results = load_results(args.json)
    if args.contexts:
        contexts = [int(x) for x in args.contexts.split(",")]
    else:
        contexts = sorted({r.length for r in results.values() if r.part != "prefill"
                           and r.threads == args.threads}) or [1024, 4096]

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} thread(s), float32; our times from {args.json or '(no JSON given)'}")
    print("ratio = torch time / our time (> 1: ours is faster)\n")
    header = f"{'design':<21} {'part':<6} {'L':>6} {'torch op':<34} {'ours ms':>9} " \
             f"{'torch ms':>9} {'ratio':>7}"
    print(header)
    print("-" * len(header))

    def row(design, part, L, op, t_torch):
        ours = ours_ms(results, design, part, L, args.threads)
        ours_s = f"{ours:9.3f}" if ours is not None else f"{'-':>9}"
        ratio = f"{t_torch / ours:7.2f}" if ours else f"{'-':>7}"
        print(f"{design:<21} {part:<6} {L:>6} {op:<34} {ours_s} {t_torch:9.3f} {ratio}",
              flush=True)

    with torch.inference_mode():
        for L in contexts:
            cases = core_cases(torch, L)
            for design in ["mha", "gqa", "mla_naive_recompute", "mla_naive_cached",
                           "mla_absorbed"]:
                if design == "mla_naive_recompute" and L > args.max_naive_context:
                    continue
                op = "matmul + SDPA" if design == "mla_naive_recompute" else "SDPA"
                row(design, "core", L, op, time_step(cases[design]))
            del cases
        if not args.no_layer:
            hf = HfLayer(torch, transformers, max(contexts) + 8)
            ours_design = "mla_naive_recompute" if hf.layout == "latent" else "mla_naive_cached"
            for L in contexts:
                if hf.layout == "latent" and L > args.max_naive_context:
                    continue
                t = time_step(hf.make_step(L))
                op = f"HF DeepseekV3Attention ({hf.layout})"
                row(ours_design, "layer", L, op, t)
                row("mla_absorbed", "layer", L, op, t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
