#!/usr/bin/env python3
"""Plots decode_bench's JSON output and prints it as a markdown table.

    decode_bench --benchmark_repetitions=3 --benchmark_out=decode.json --benchmark_out_format=json
    python3 benchmarks/plot_decode.py decode.json --out-dir docs          # two PNGs
    python3 benchmarks/plot_decode.py decode.json --markdown             # table only

Writes <out-dir>/decode_tokens_per_s.png (new tokens per second against the context length, one
line per design, one panel per part / cache type / thread count) and <out-dir>/kv_cache_bytes.png
(cache bytes read per decode step against the context length, one line per design). With
--benchmark_repetitions the median is plotted and the table shows median and best.

Needs matplotlib for the plots (not for --markdown): pip install matplotlib
"""
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict

NAME_RE = re.compile(
    r"^(?P<design>[a-z_]+)/(?P<part>core|layer|prefill)/(?P<type>f32|bf16)/"
    r"(?P<lkey>[LT]):(?P<length>\d+)/threads:(?P<threads>\d+)")

DESIGN_ORDER = ["mha", "gqa", "mla_naive_cached", "mla_naive_recompute", "mla_absorbed"]
DESIGN_LABEL = {
    "mha": "MHA 128x128",
    "gqa": "GQA 64q/8kv x128 (Qwen2.5-72B)",
    "mla_naive_cached": "MLA naive, decompressed cache",
    "mla_naive_recompute": "MLA naive, recompute K/V",
    "mla_absorbed": "MLA absorbed",
}
TIME_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
COUNTERS = ["tok_s", "kv_bytes", "gflops", "pct_peak", "speedup_vs_recompute",
            "speedup_vs_cached"]


class Result:
    """One benchmark: median (or mean without repetitions) and best time over its repetitions."""

    def __init__(self, name, m):
        self.name = name
        self.design = m["design"]
        self.part = m["part"]
        self.type = m["type"]
        self.length = int(m["length"])
        self.threads = int(m["threads"])
        self.times_ms = []      # per repetition
        self.median_ms = None   # from the median aggregate where present
        self.counters = {}      # median aggregate, else mean over repetitions
        self._rep_counters = defaultdict(list)

    def finish(self):
        if self.median_ms is None and self.times_ms:
            self.median_ms = statistics.median(self.times_ms)
        for k, v in self._rep_counters.items():
            self.counters.setdefault(k, statistics.median(v))

    @property
    def best_ms(self):
        return min(self.times_ms) if self.times_ms else self.median_ms


def load_results(path):
    """Returns (context dict, {name: Result}) from a Google Benchmark JSON file."""
    with open(path) as f:
        data = json.load(f)
    results = {}
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        name = b.get("run_name", b["name"])
        m = NAME_RE.match(name)
        if not m:
            continue
        r = results.setdefault(name, Result(name, m.groupdict()))
        ms = b["real_time"] * TIME_TO_MS[b.get("time_unit", "ns")]
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                r.median_ms = ms
                for k in COUNTERS:
                    if k in b:
                        r.counters[k] = b[k]
        else:
            r.times_ms.append(ms)
            for k in COUNTERS:
                if k in b:
                    r._rep_counters[k].append(b[k])
    for r in results.values():
        r.finish()
    return data.get("context", {}), results


def machine_line(ctx):
    cpu = ctx.get("cpu_model", "unknown CPU")
    peaks = ", ".join(
        f"{label} {ctx[key]}" for key, label in [
            ("peak_fma_gflops_1t", "FMA 1t GFLOP/s"), ("peak_fma_gflops_2t", "2t"),
            ("peak_read_gbps_1t", "read 1t GB/s"), ("peak_read_gbps_2t", "2t")]
        if key in ctx)
    cores = ctx.get("num_cpus", "?")
    return f"{cpu}, {cores} CPUs; measured peaks: {peaks}"


def markdown(ctx, results):
    lines = [f"CPU: {machine_line(ctx)}; wall-clock times", "",
             "| benchmark | median ms | best ms | tok/s | GFLOP/s | % of peak | cache MB read "
             "| absorbed vs recompute | absorbed vs cached |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in results.values():
        c = r.counters
        kv = c.get("kv_bytes")
        lines.append("| " + " | ".join([
            f"`{r.name.replace('/real_time', '')}`", f(r.median_ms, ".3g"), f(r.best_ms, ".3g"), f(c.get("tok_s"), ".3g"),
            f(c.get("gflops"), ".3g"), f(c.get("pct_peak"), ".1f"),
            f(kv / 1e6 if kv is not None else None, ".3g"),
            f(c.get("speedup_vs_recompute"), ".1f") + ("x" if "speedup_vs_recompute" in c else ""),
            f(c.get("speedup_vs_cached"), ".2f") + ("x" if "speedup_vs_cached" in c else ""),
        ]) + " |")
    return "\n".join(lines)


def pivot(ctx, results):
    """One row per part / type / threads / L, one column per design: median tok/s (best), % of
    peak; then absorbed's speed-ups over the naive paths."""
    rows = defaultdict(dict)
    for r in results.values():
        rows[(r.part, r.type, r.threads, r.length)][r.design] = r
    designs = [d for d in DESIGN_ORDER if any(d in v for v in rows.values())]
    lines = [f"CPU: {machine_line(ctx)}", "",
             "Cells: median tokens/s (best of the repetitions) and % of peak.", "",
             "| part | cache | threads | L or T | " + " | ".join(designs) +
             " | absorbed vs recompute | absorbed vs cached |",
             "|---|---|---:|---:|" + "---:|" * (len(designs) + 2)]
    order = {"core": 0, "layer": 1, "prefill": 2}
    for key in sorted(rows, key=lambda k: (order[k[0]], k[1] != "f32", k[2], k[3])):
        part, typ, threads, length = key
        cells = []
        for d in designs:
            r = rows[key].get(d)
            if r is None:
                cells.append("")
                continue
            tokens = r.counters.get("tok_s", 0)
            best = tokens * r.median_ms / r.best_ms if r.best_ms else tokens
            cells.append(f"{tokens:.3g} ({best:.3g}), {r.counters.get('pct_peak', 0):.0f}%")
        a = rows[key].get("mla_absorbed")
        sp = [(f"{a.counters[k]:.3g}x" if a is not None and k in a.counters else "")
              for k in ("speedup_vs_recompute", "speedup_vs_cached")]
        lines.append(f"| {part} | {typ} | {threads} | {length} | " + " | ".join(cells + sp) + " |")
    return "\n".join(lines)


def import_pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        sys.stderr.write("plot_decode.py needs matplotlib for the plots: pip install matplotlib\n"
                         "(or run with --markdown for the table alone)\n")
        sys.exit(1)


def decode_series(results, key_fn):
    """{panel key: {design: [(L, Result)]}} for decode results (no prefill)."""
    panels = defaultdict(lambda: defaultdict(list))
    for r in results.values():
        if r.part == "prefill":
            continue
        panels[key_fn(r)][r.design].append((r.length, r))
    for designs in panels.values():
        for pts in designs.values():
            pts.sort(key=lambda p: p[0])
    return panels


def context_ticks(ax, lengths):
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths)
    ax.set_xticklabels([f"{n // 1024}k" if n >= 1024 else str(n) for n in lengths])


def save(fig, plt, path):
    fig.savefig(path, dpi=80)
    plt.close(fig)
    try:  # a 256-colour palette makes the PNG several times smaller (Pillow ships with matplotlib)
        from PIL import Image
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    except ImportError:
        pass


def plot_tokens(plt, ctx, results, path):
    panels = decode_series(results, lambda r: (r.part, r.type, r.threads))
    keys = sorted(panels, key=lambda k: (k[0] != "core", k[1] != "f32", k[2]))
    cols = min(2, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        lengths = sorted({n for pts in panels[key].values() for n, _ in pts})
        for design in DESIGN_ORDER:
            pts = panels[key].get(design)
            if not pts:
                continue
            ax.plot([n for n, _ in pts], [r.counters.get("tok_s", 0) for _, r in pts],
                    marker="o", label=DESIGN_LABEL.get(design, design))
        context_ticks(ax, lengths)
        ax.set_yscale("log")
        part, typ, threads = key
        ax.set_title(f"{part}, {typ} cache, {threads} thread{'s' if threads > 1 else ''}")
        ax.set_xlabel("context length L (tokens in cache)")
        ax.set_ylabel("decode tokens/s (one layer, batch 1)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(machine_line(ctx), fontsize=9)
    fig.tight_layout()
    save(fig, plt, path)


def plot_bytes(plt, ctx, results, path):
    panels = decode_series(results, lambda r: r.type)
    keys = sorted(panels, key=lambda t: t != "f32")
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.2), squeeze=False)
    for ax, typ in zip(axes.flat, keys):
        lengths = sorted({n for pts in panels[typ].values() for n, _ in pts})
        # Absorbed and naive-recompute read the same latent cache: one line for both.
        series = [("mha", ["mha"]), ("gqa", ["gqa"]), ("mla_naive_cached", ["mla_naive_cached"]),
                  ("latent", ["mla_absorbed", "mla_naive_recompute"])]
        for label_key, designs in series:
            by_len = {}
            for design in designs:
                for n, r in panels[typ].get(design, []):  # same for every part and thread count
                    by_len.setdefault(n, r.counters.get("kv_bytes", 0))
            if not by_len:
                continue
            xs = sorted(by_len)
            label = ("MLA latent cache (absorbed, naive recompute)" if label_key == "latent"
                     else DESIGN_LABEL[label_key])
            ax.plot(xs, [by_len[n] / 2**20 for n in xs], marker="o", label=label)
        context_ticks(ax, lengths)
        ax.set_yscale("log")
        ax.set_title(f"KV cache read per decode step, one layer, {typ} elements")
        ax.set_xlabel("context length L (tokens in cache)")
        ax.set_ylabel("MiB")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(machine_line(ctx), fontsize=9)
    fig.tight_layout()
    save(fig, plt, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="decode_bench --benchmark_out file (JSON)")
    ap.add_argument("--out-dir", default=".", help="where the PNGs go (default: .)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table, no plots")
    ap.add_argument("--pivot", action="store_true",
                    help="print a markdown table with one column per design, no plots")
    ap.add_argument("--filter", default=None,
                    help="only benchmarks whose name matches this regular expression")
    args = ap.parse_args(argv)
    ctx, results = load_results(args.json)
    if args.filter:
        rx = re.compile(args.filter)
        results = {k: r for k, r in results.items() if rx.search(k)}
    if not results:
        sys.stderr.write(f"{args.json}: no decode_bench results found\n")
        return 1
    if args.markdown or args.pivot:
        print(pivot(ctx, results) if args.pivot else markdown(ctx, results))
        return 0
    plt = import_pyplot()
    import os
    os.makedirs(args.out_dir, exist_ok=True)
    tok = os.path.join(args.out_dir, "decode_tokens_per_s.png")
    kvb = os.path.join(args.out_dir, "kv_cache_bytes.png")
    plot_tokens(plt, ctx, results, tok)
    plot_bytes(plt, ctx, results, kvb)
    print(f"wrote {tok} and {kvb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
