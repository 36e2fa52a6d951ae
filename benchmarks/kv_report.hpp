// KV-cache size report: how many bytes each attention design caches per token, read from the
// library's own cache objects (mla::LatentCache / mla::KvCache allocated for the real model
// presets), plus the reduction MLA brings against every GQA/MHA model and a check that the
// published figures come out (DeepSeek-V3's 576-value latent row is 71.88% smaller per layer than
// Qwen2.5-72B's 2048 K/V values; 70.272 KB / 327.68 KB / 516.1 KB per token in BF16 for
// DeepSeek-V3 / Qwen2.5-72B / Llama-3.1-405B, all layers, decimal KB).
//
// No size formula lives here: every byte count is what an allocated cache reports through
// bytes_per_token() and bytes_allocated(). The benchmark binary kv_cache_report prints the report;
// tests/benchmarks/test_kv_cache_report.cpp compares it with the config formulas.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "mla/cache/kv_cache.hpp"
#include "mla/cache/latent_cache.hpp"
#include "mla/cache/quantized_latent_cache.hpp"
#include "mla/core/check.hpp"
#include "mla/core/types.hpp"
#include "mla/presets.hpp"

namespace mla_bench::kv {

/// One model's attention, described by how to build its cache (the same constructors the layers'
/// make_latent_cache() / make_cache() / make_decompressed_cache() call).
struct ModelEntry {
  std::string name;       ///< "DeepSeek-V3"
  std::string attention;  ///< "MLA", "GQA" or "MHA"
  std::int64_t layers = 0;
  bool latent = false;      ///< LatentCache (MLA) or KvCache (GQA/MHA)
  mla::Index kv_lora = 0;   ///< latent: kv_lora_rank
  mla::Index rope = 0;      ///< latent: qk_rope_head_dim
  mla::Index kv_heads = 0;  ///< KvCache: key/value heads
  mla::Index head_dim = 0;  ///< KvCache: key width
  mla::Index v_dim = 0;     ///< KvCache: value width
  std::string cache_shape;  ///< human-readable cache row, e.g. "c_kv 512 + k_pe 64"
};

inline ModelEntry mla_entry(const std::string& name, const mla::MlaConfig& c) {
  ModelEntry e;
  e.name = name;
  e.attention = "MLA";
  e.layers = c.num_hidden_layers;
  e.latent = true;
  e.kv_lora = c.kv_lora_rank;
  e.rope = c.qk_rope_head_dim;
  e.cache_shape = mla::internal::str_cat("latent c_kv ", c.kv_lora_rank, " + k_pe ",
                                         c.qk_rope_head_dim);
  return e;
}

inline ModelEntry kv_entry(const std::string& name, const std::string& attention,
                           std::int64_t layers, mla::Index kv_heads, mla::Index head_dim,
                           mla::Index v_dim) {
  ModelEntry e;
  e.name = name;
  e.attention = attention;
  e.layers = layers;
  e.kv_heads = kv_heads;
  e.head_dim = head_dim;
  e.v_dim = v_dim;
  e.cache_shape = mla::internal::str_cat(kv_heads, " KV heads x (K ", head_dim, " + V ", v_dim,
                                         ")");
  return e;
}

inline ModelEntry gqa_entry(const std::string& name, const mla::AttentionConfig& c) {
  return kv_entry(name, c.num_key_value_heads == c.num_attention_heads ? "MHA" : "GQA",
                  c.num_hidden_layers, c.num_key_value_heads, c.head_dim, c.head_dim);
}

/// The report's models, in print order: MLA first, then GQA, then MHA.
inline std::vector<ModelEntry> report_models() {
  namespace p = mla::presets;
  const mla::MlaConfig v3 = p::deepseek_v3();
  return {
      mla_entry("DeepSeek-V3", v3),
      mla_entry("DeepSeek-V2", p::deepseek_v2()),
      mla_entry("DeepSeek-V2-Lite", p::deepseek_v2_lite()),
      gqa_entry("Qwen2.5-32B", p::qwen2_5_32b()),
      gqa_entry("Qwen2.5-72B", p::qwen2_5_72b()),
      gqa_entry("Llama-3.1-8B", p::llama3_1_8b()),
      gqa_entry("Llama-3.1-70B", p::llama3_1_70b()),
      gqa_entry("Llama-3.1-405B", p::llama3_1_405b()),
      gqa_entry("MHA 128x128", p::mha_128x128()),
      // What V3 would cache without MLA: the naive path's decompressed cache (H, N+P, V).
      kv_entry("DeepSeek-V3 as MHA", "MHA", v3.num_hidden_layers, v3.num_attention_heads,
               v3.qk_head_dim(), v3.v_head_dim),
  };
}

/// Context lengths of the per-sequence columns.
inline const std::vector<std::int64_t>& report_contexts() {
  static const std::vector<std::int64_t> k{4096, 32768, 131072};
  return k;
}

/// Cache sizes of one model with one element type, as the cache objects report them.
struct CacheFigures {
  std::string model, attention, cache_shape;
  std::string dtype;        ///< "bf16" (2 bytes; fp16 is the same size) or "f32"
  int element_bytes = 0;    ///< sizeof(element)
  std::int64_t layers = 0;
  std::int64_t elements_per_token_layer = 0;  ///< values_per_token() / row_dim()
  std::int64_t bytes_per_token_layer = 0;     ///< bytes_per_token()
  std::int64_t bytes_per_token_model = 0;     ///< bytes_per_token() x layers
  std::vector<double> gib_per_sequence;       ///< one per report_contexts(), all layers, GiB
};

/// Builds the cache for `m` with capacity `tokens` (element type T), exactly as the layers do.
template <class T, class Fn>
void with_cache(const ModelEntry& m, mla::Index tokens, Fn&& fn) {
  if (m.latent) {
    mla::LatentCache<T> cache(m.kv_lora, m.rope, tokens);
    fn(cache.row_dim(), cache.bytes_per_token(), cache.bytes_allocated());
  } else {
    mla::KvCache<T> cache(m.kv_heads, m.head_dim, m.v_dim, tokens);
    fn(cache.values_per_token(), cache.bytes_per_token(), cache.bytes_allocated());
  }
}

/// An 8-bit latent cache of an MLA model, allocated for one token, as figures in the same form:
/// T = Fp8Latent (FlashMLA's FP8 layout: c_kv as FP8 e4m3, one float scale per 128 values, k_pe
/// in bf16) or Int8Latent (int8 c_kv, one float scale and the code sum per token, bf16 k_pe).
template <class T>
CacheFigures measure_8bit(const ModelEntry& m, const std::string& dtype) {
  CacheFigures f;
  f.model = m.name;
  f.attention = m.attention;
  f.cache_shape = m.cache_shape;
  f.dtype = dtype;
  f.element_bytes = 1;
  f.layers = m.layers;
  const mla::QuantizedLatentCache<T> cache(m.kv_lora, m.rope, 1);
  MLA_CHECK_DATA(cache.bytes_allocated() == cache.bytes_per_token(), m.name,
                 ": a one-token ", dtype, " cache allocates ", cache.bytes_allocated(),
                 " bytes but reports ", cache.bytes_per_token(), " bytes per token");
  f.elements_per_token_layer = cache.row_dim();
  f.bytes_per_token_layer = static_cast<std::int64_t>(cache.bytes_per_token());
  f.bytes_per_token_model = f.bytes_per_token_layer * m.layers;
  for (std::int64_t n : report_contexts())
    f.gib_per_sequence.push_back(static_cast<double>(f.bytes_per_token_model) *
                                 static_cast<double>(n) / (1024.0 * 1024.0 * 1024.0));
  return f;
}

/// Allocates a one-token cache of `m` with element type T and reads its byte counts.
/// Throws std::runtime_error if the allocation disagrees with bytes_per_token().
template <class T>
CacheFigures measure(const ModelEntry& m, const std::string& dtype) {
  CacheFigures f;
  f.model = m.name;
  f.attention = m.attention;
  f.cache_shape = m.cache_shape;
  f.dtype = dtype;
  f.element_bytes = static_cast<int>(sizeof(T));
  f.layers = m.layers;
  with_cache<T>(m, 1, [&](mla::Index values, std::size_t per_token, std::size_t allocated) {
    MLA_CHECK_DATA(allocated == per_token, m.name, ": a one-token ", dtype, " cache allocates ",
                   allocated, " bytes but reports ", per_token, " bytes per token");
    f.elements_per_token_layer = values;
    f.bytes_per_token_layer = static_cast<std::int64_t>(allocated);
  });
  f.bytes_per_token_model = f.bytes_per_token_layer * m.layers;
  for (std::int64_t n : report_contexts())
    f.gib_per_sequence.push_back(static_cast<double>(f.bytes_per_token_model) *
                                 static_cast<double>(n) / (1024.0 * 1024.0 * 1024.0));
  return f;
}

/// Cache reduction of one MLA model against one GQA/MHA model (same element type).
struct Reduction {
  std::string mla_model, baseline, baseline_attention;
  double per_layer_pct = 0;    ///< 100 (1 - MLA bytes/token/layer / baseline's)
  double whole_model_pct = 0;  ///< same with all layers of each model
  double per_layer_ratio = 0;  ///< baseline / MLA bytes per token per layer
};

/// A published figure and the value this report computes for it.
struct PublishedCheck {
  std::string what;       ///< "DeepSeek-V3, BF16, per token, all 61 layers"
  std::string published;  ///< as published, e.g. "70.272 KB"
  double value = 0;       ///< our value in the published unit
  int decimals = 0;       ///< decimals the source rounded to
  double published_value = 0;
  std::string unit;
  /// Our value rounded like the source.
  std::string rounded() const {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
    return std::string(buf) + unit;
  }
  bool ok() const {
    const double scale = std::pow(10.0, decimals);
    return std::llround(value * scale) == std::llround(published_value * scale);
  }
};

struct Report {
  std::vector<CacheFigures> sizes;  ///< per model: bf16 then f32 entries, model order
  /// MLA models with the 8-bit latent caches (mla::Fp8LatentCache, mla::Int8LatentCache); GQA/MHA
  /// have no 8-bit cache.
  std::vector<CacheFigures> fp8_sizes, int8_sizes;
  std::vector<Reduction> reductions;
  std::vector<PublishedCheck> checks;
  std::vector<std::string> notes;

  /// The figures of `model` with `dtype`; throws std::invalid_argument when absent.
  const CacheFigures& find(const std::string& model, const std::string& dtype) const {
    for (const CacheFigures& f : sizes)
      if (f.model == model && f.dtype == dtype) return f;
    MLA_CHECK_ARG(false, "kv report: no entry for model '", model, "' with type ", dtype);
    return sizes.front();  // unreachable
  }
  const Reduction& reduction(const std::string& mla_model, const std::string& baseline) const {
    for (const Reduction& r : reductions)
      if (r.mla_model == mla_model && r.baseline == baseline) return r;
    MLA_CHECK_ARG(false, "kv report: no reduction of '", mla_model, "' against '", baseline, "'");
    return reductions.front();  // unreachable
  }
  bool all_checks_ok() const {
    for (const PublishedCheck& c : checks)
      if (!c.ok()) return false;
    return true;
  }
};

/// Builds the whole report from allocated caches.
inline Report build_report() {
  Report r;
  const std::vector<ModelEntry> models = report_models();
  for (const ModelEntry& m : models) {
    r.sizes.push_back(measure<mla::bfloat16>(m, "bf16"));
    r.sizes.push_back(measure<float>(m, "f32"));
    if (m.latent) r.fp8_sizes.push_back(measure_8bit<mla::Fp8Latent>(m, "fp8"));
    if (m.latent) r.int8_sizes.push_back(measure_8bit<mla::Int8Latent>(m, "int8"));
  }
  for (const ModelEntry& m : models) {
    if (m.attention != "MLA") continue;
    const CacheFigures& a = r.find(m.name, "bf16");
    for (const ModelEntry& b : models) {
      if (b.attention == "MLA") continue;
      const CacheFigures& base = r.find(b.name, "bf16");
      Reduction red;
      red.mla_model = m.name;
      red.baseline = b.name;
      red.baseline_attention = b.attention;
      red.per_layer_pct = 100.0 * (1.0 - double(a.bytes_per_token_layer) /
                                             double(base.bytes_per_token_layer));
      red.whole_model_pct = 100.0 * (1.0 - double(a.bytes_per_token_model) /
                                               double(base.bytes_per_token_model));
      red.per_layer_ratio = double(base.bytes_per_token_layer) / double(a.bytes_per_token_layer);
      r.reductions.push_back(red);
    }
  }
  auto kb = [&](const std::string& model) {
    return double(r.find(model, "bf16").bytes_per_token_model) / 1000.0;
  };
  const CacheFigures& v3 = r.find("DeepSeek-V3", "bf16");
  r.checks.push_back({"DeepSeek-V3 latent (576 values) vs Qwen2.5-72B K/V (2048 values), per layer",
                      "71.88% smaller", r.reduction("DeepSeek-V3", "Qwen2.5-72B").per_layer_pct,
                      2, 71.88, "%"});
  r.checks.push_back({"DeepSeek-V3 latent vs Qwen2.5-32B K/V, per layer", "71.88% smaller",
                      r.reduction("DeepSeek-V3", "Qwen2.5-32B").per_layer_pct, 2, 71.88, "%"});
  r.checks.push_back({mla::internal::str_cat("DeepSeek-V3, BF16, per token, ", v3.layers,
                                             " layers"),
                      "70.272 KB", kb("DeepSeek-V3"), 3, 70.272, " KB"});
  r.checks.push_back({mla::internal::str_cat("Qwen2.5-72B, BF16, per token, ",
                                             r.find("Qwen2.5-72B", "bf16").layers, " layers"),
                      "327.68 KB", kb("Qwen2.5-72B"), 2, 327.68, " KB"});
  r.checks.push_back({mla::internal::str_cat("Llama-3.1-405B, BF16, per token, ",
                                             r.find("Llama-3.1-405B", "bf16").layers, " layers"),
                      "516.1 KB", kb("Llama-3.1-405B"), 1, 516.1, " KB"});
  r.notes.push_back(
      "8-bit: MLA latent caches only (mla::Fp8LatentCache, FlashMLA's layout: 512 FP8 e4m3 c_kv "
      "values + 4 float scales + 64 bf16 k_pe = 656 bytes for DeepSeek-V3; mla::Int8LatentCache: 512 "
      "int8 c_kv codes + a float scale + an int32 code sum + 64 bf16 k_pe = 648 bytes); 'values' counts the "
      "dequantised row. The library has no 8-bit K/V cache for GQA/MHA. FP16 has the size of "
      "BF16.");
  r.notes.push_back(
      "Bytes come from allocated mla::LatentCache / mla::KvCache objects (bytes_per_token(), "
      "bytes_allocated() of a one-token cache); KB = 1000 bytes, GiB = 2^30 bytes; one sequence, "
      "all layers, batch 1.");
  return r;
}

enum class Format { kTable, kCsv, kJson, kMarkdown };

/// "table", "csv", "json", "markdown" (or "md"); nullopt for anything else.
inline std::optional<Format> parse_format(std::string_view s) {
  if (s == "table" || s == "text") return Format::kTable;
  if (s == "csv") return Format::kCsv;
  if (s == "json") return Format::kJson;
  if (s == "markdown" || s == "md") return Format::kMarkdown;
  return std::nullopt;
}

namespace detail {

inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
/// Decimal KB with up to 3 decimals, trailing zeros dropped (70.272, 327.68, 516.096).
inline std::string kb(std::int64_t bytes) {
  std::string s = fmt("%.3f", double(bytes) / 1000.0);
  while (!s.empty() && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}
inline std::string gib(double g) { return fmt("%.3f", g); }
inline std::string pct(double p) { return fmt("%.2f%%", p); }
inline std::string ctx_label(std::int64_t n) { return std::to_string(n / 1024) + "k"; }

using Row = std::vector<std::string>;

inline std::vector<Row> size_rows(const std::vector<CacheFigures>& sizes,
                                  const std::string& dtype, bool with_dtype) {
  std::vector<Row> rows;
  Row head{"Model", "Attention", "Layers", "Cache row per token per layer"};
  if (with_dtype) head.push_back("Type");
  for (const char* h : {"Values/token/layer", "Bytes/token/layer", "Bytes/token all layers",
                        "KB/token all layers"})
    head.push_back(h);
  for (std::int64_t n : report_contexts()) head.push_back("GiB @" + ctx_label(n));
  rows.push_back(head);
  for (const CacheFigures& f : sizes) {
    if (!dtype.empty() && f.dtype != dtype) continue;
    Row row{f.model, f.attention, std::to_string(f.layers), f.cache_shape};
    if (with_dtype) row.push_back(f.dtype);
    row.push_back(std::to_string(f.elements_per_token_layer));
    row.push_back(std::to_string(f.bytes_per_token_layer));
    row.push_back(std::to_string(f.bytes_per_token_model));
    row.push_back(kb(f.bytes_per_token_model));
    for (double g : f.gib_per_sequence) row.push_back(gib(g));
    rows.push_back(row);
  }
  return rows;
}

inline std::vector<Row> reduction_rows(const Report& r) {
  std::vector<Row> rows{{"MLA model", "vs", "Attention", "Smaller per layer",
                         "Smaller whole model", "Ratio per layer"}};
  for (const Reduction& x : r.reductions)
    rows.push_back({x.mla_model, x.baseline, x.baseline_attention, pct(x.per_layer_pct),
                    pct(x.whole_model_pct), fmt("%.2fx", x.per_layer_ratio)});
  return rows;
}

inline std::vector<Row> check_rows(const Report& r) {
  std::vector<Row> rows{{"Published figure", "Published", "This report", "Match"}};
  for (const PublishedCheck& c : r.checks)
    rows.push_back({c.what, c.published, c.rounded() + " (" + fmt("%.4f", c.value) + c.unit + ")",
                    c.ok() ? "yes" : "NO"});
  return rows;
}

/// Numbers, percentages and ratios are right-aligned.
inline bool is_numeric(const std::string& s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0])) == 0) return false;
  return s.find_first_not_of("0123456789.%x") == std::string::npos;
}

inline void text_table(std::ostream& os, const std::vector<Row>& rows) {
  std::vector<std::size_t> w(rows.front().size(), 0);
  for (const Row& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) w[i] = std::max(w[i], row[i].size());
  for (std::size_t k = 0; k < rows.size(); ++k) {
    const Row& row = rows[k];
    for (std::size_t i = 0; i < row.size(); ++i) {
      const std::size_t pad = w[i] - row[i].size();
      if (i) os << "  ";
      if (k > 0 && is_numeric(row[i]))
        os << std::string(pad, ' ') << row[i];
      else
        os << row[i] << (i + 1 < row.size() ? std::string(pad, ' ') : "");
    }
    os << '\n';
    if (k == 0) {
      std::size_t total = 0;
      for (std::size_t x : w) total += x + 2;
      os << std::string(total - 2, '-') << '\n';
    }
  }
}

inline void markdown_table(std::ostream& os, const std::vector<Row>& rows) {
  for (std::size_t k = 0; k < rows.size(); ++k) {
    os << '|';
    for (const std::string& c : rows[k]) os << ' ' << c << " |";
    os << '\n';
    if (k == 0) {
      os << '|';
      for (std::size_t i = 0; i < rows[0].size(); ++i)
        os << (rows.size() > 1 && is_numeric(rows[1][i]) ? "---:|" : "---|");
      os << '\n';
    }
  }
}

inline std::string csv_cell(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

inline void csv_table(std::ostream& os, const std::vector<Row>& rows) {
  for (const Row& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) os << (i ? "," : "") << csv_cell(row[i]);
    os << '\n';
  }
}

}  // namespace detail

/// Renders the report. `section` selects "sizes", "reductions", "checks" or "" for all.
inline std::string render(const Report& r, Format format, const std::string& section = "") {
  std::ostringstream os;
  const bool all = section.empty();
  using namespace detail;
  switch (format) {
    case Format::kTable:
    case Format::kMarkdown: {
      const bool md = format == Format::kMarkdown;
      auto table = [&](const std::vector<Row>& rows) {
        if (md)
          markdown_table(os, rows);
        else
          text_table(os, rows);
      };
      const char* h = md ? "### " : "== ";
      if (all || section == "sizes") {
        for (const char* dt : {"bf16", "f32"}) {
          os << h << "KV cache per token, " << (std::string(dt) == "bf16" ? "16-bit (BF16/FP16)"
                                                                          : "32-bit (FP32)")
             << " elements" << (md ? "" : " ==") << "\n\n";
          table(size_rows(r.sizes, dt, false));
          os << '\n';
        }
        os << h << "MLA latent cache per token, 8-bit (FP8 e4m3 c_kv + scales + bf16 k_pe)"
           << (md ? "" : " ==") << "\n\n";
        table(size_rows(r.fp8_sizes, "fp8", false));
        os << '\n';
        os << h << "MLA latent cache per token, 8-bit (int8 c_kv + scale and code sum + bf16 k_pe)"
           << (md ? "" : " ==") << "\n\n";
        table(size_rows(r.int8_sizes, "int8", false));
        os << '\n';
      }
      if (all || section == "reductions") {
        os << h << "Cache reduction of MLA against GQA/MHA (any element type)"
           << (md ? "" : " ==") << "\n\n";
        table(reduction_rows(r));
        os << '\n';
      }
      if (all || section == "checks") {
        os << h << "Published figures" << (md ? "" : " ==") << "\n\n";
        table(check_rows(r));
        os << '\n';
      }
      if (all)
        for (const std::string& n : r.notes) os << (md ? "- " : "* ") << n << '\n';
      break;
    }
    case Format::kCsv:
      // One table per section; with all sections they follow one another, separated by an
      // empty line (pick one with --section for a single-table CSV).
      if (all || section == "sizes") {
        std::vector<CacheFigures> every = r.sizes;
        every.insert(every.end(), r.fp8_sizes.begin(), r.fp8_sizes.end());
        every.insert(every.end(), r.int8_sizes.begin(), r.int8_sizes.end());
        csv_table(os, size_rows(every, "", true));
      }
      if (all) os << '\n';
      if (all || section == "reductions") csv_table(os, reduction_rows(r));
      if (all) os << '\n';
      if (all || section == "checks") csv_table(os, check_rows(r));
      break;
    case Format::kJson: {
      nlohmann::ordered_json j;
      j["units"] = {{"KB", 1000}, {"GiB", 1073741824}};
      j["contexts"] = report_contexts();
      if (all || section == "sizes") {
        auto& arr = j["sizes"] = nlohmann::ordered_json::array();
        std::vector<CacheFigures> every = r.sizes;
        every.insert(every.end(), r.fp8_sizes.begin(), r.fp8_sizes.end());
        every.insert(every.end(), r.int8_sizes.begin(), r.int8_sizes.end());
        for (const CacheFigures& f : every)
          arr.push_back({{"model", f.model},
                         {"attention", f.attention},
                         {"cache_row", f.cache_shape},
                         {"dtype", f.dtype},
                         {"element_bytes", f.element_bytes},
                         {"layers", f.layers},
                         {"elements_per_token_layer", f.elements_per_token_layer},
                         {"bytes_per_token_layer", f.bytes_per_token_layer},
                         {"bytes_per_token_all_layers", f.bytes_per_token_model},
                         {"gib_per_sequence", f.gib_per_sequence}});
      }
      if (all || section == "reductions") {
        auto& arr = j["reductions"] = nlohmann::ordered_json::array();
        for (const Reduction& x : r.reductions)
          arr.push_back({{"mla_model", x.mla_model},
                         {"baseline", x.baseline},
                         {"baseline_attention", x.baseline_attention},
                         {"per_layer_pct", x.per_layer_pct},
                         {"whole_model_pct", x.whole_model_pct},
                         {"per_layer_ratio", x.per_layer_ratio}});
      }
      if (all || section == "checks") {
        auto& arr = j["published_checks"] = nlohmann::ordered_json::array();
        for (const PublishedCheck& c : r.checks)
          arr.push_back({{"what", c.what},
                         {"published", c.published},
                         {"value", c.value},
                         {"rounded", c.rounded()},
                         {"match", c.ok()}});
      }
      j["notes"] = r.notes;
      os << j.dump(2) << '\n';
      break;
    }
  }
  return os.str();
}

}  // namespace mla_bench::kv
