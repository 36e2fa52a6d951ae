// Conformance against Hugging Face transformers reference vectors: a case folder holds
// config.json, model.safetensors (real checkpoint weight names) and io*.safetensors files with
// inputs, outputs and intermediates of one attention layer (layout: shared/reference/README.md).
//
// check_reference_case() loads the layer from the folder and, for every io file, compares
//   - the RoPE inverse frequencies and the softmax scale (pins a schedule bug down),
//   - the intermediates: q/k/v after RoPE (MHA/GQA) or q_nope, q_pe, kv_latent, k_pe (MLA),
//   - the full causal prefill output and the per-head attention output before o_proj,
//   - prefill of the first half followed by token-by-token decode of the rest,
// on every execution path (MLA: absorbed, naive recomputing from the latent cache, naive with a
// decompressed cache). Errors are max|ours - ref| / max|ref| per tensor. Used by the gtest suite
// and by the hf_layer_check example, so both judge a case the same way.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "mla/io/checkpoint.hpp"
#include "mla/io/hf_config.hpp"
#include "mla/io/load_layer.hpp"
#include "mla/io/safetensors.hpp"

namespace mla::conformance {

struct Check {
  std::string io_file;  ///< e.g. "io.safetensors"
  std::string what;     ///< e.g. "output prefill absorbed"
  double max_abs_err = 0;
  double rel_err = 0;    ///< max_abs_err / max|ref|
  double tolerance = 0;  ///< bound on rel_err
  bool ok() const { return rel_err <= tolerance; }  // false for NaN
};

struct CaseResult {
  std::string folder;
  std::string kind;  ///< "mla" or "gqa"
  std::vector<Check> checks;
  bool ok() const {
    return !checks.empty() &&
           std::all_of(checks.begin(), checks.end(), [](const Check& c) { return c.ok(); });
  }
  /// The check with the largest rel_err / tolerance.
  const Check* worst() const {
    const Check* w = nullptr;
    for (const Check& c : checks)
      if (!w || !(c.rel_err / c.tolerance <= w->rel_err / w->tolerance)) w = &c;
    return w;
  }
};

struct Tolerances {
  /// For outputs and activations. 2e-4 is the reference README's float32 criterion; the data
  /// are float32-rounded float64 results (~3e-8 relative each), so a double instantiation is held
  /// to 2e-7.
  double activations = 0;
  /// For rope_inv_freq and attn_scale, which are stored in float64.
  double constants = 1e-12;
};

template <class Scalar>
Tolerances default_tolerances() {
  return Tolerances{std::is_same_v<Scalar, double> ? 2e-7 : 2e-4, 1e-12};
}

namespace detail {

template <class A, class B>
void add_check(CaseResult& r, const std::string& io, const std::string& what, const A& ours,
               const B& ref, double tol) {
  MLA_CHECK_DATA(ours.size() == ref.size(), "reference '", what, "' in ", io, " has ",
                 ref.size(), " values, the layer produced ", ours.size());
  double max_abs = 0, max_ref = 0;
  for (Index i = 0; i < ref.size(); ++i) {
    const double d = std::abs(static_cast<double>(ours.data()[i]) -
                              static_cast<double>(ref.data()[i]));
    max_abs = std::isnan(d) || d > max_abs ? d : max_abs;
    max_ref = std::max(max_ref, std::abs(static_cast<double>(ref.data()[i])));
  }
  r.checks.push_back(Check{io, what, max_abs, max_ref > 0 ? max_abs / max_ref : max_abs, tol});
}

template <class Scalar>
Matrix<Scalar> read_2d(const io::SafetensorsFile& f, const std::string& name) {
  const auto& info = f.info(name);
  MLA_CHECK_DATA(!info.shape.empty(), "reference tensor '", name, "' is a scalar");
  Index rows = info.shape[0], cols = 1;
  for (std::size_t i = 1; i < info.shape.size(); ++i) cols *= info.shape[i];
  const std::vector<Scalar> v = f.read<Scalar>(name);
  return Eigen::Map<const Matrix<Scalar>>(v.data(), rows, cols);
}

inline Positions read_positions(const io::SafetensorsFile& f) {
  const std::vector<std::int64_t> p = f.read<std::int64_t>("position_ids");
  return Eigen::Map<const Positions>(p.data(), static_cast<Index>(p.size()));
}

inline std::vector<std::filesystem::path> io_files(const std::filesystem::path& folder) {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(folder)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("io", 0) == 0 && e.path().extension() == ".safetensors") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  MLA_CHECK_DATA(!out.empty(), "'", folder.string(), "' has no io*.safetensors file");
  return out;
}

/// Runs `x` through `step(chunk_x, chunk_positions, chunk_out)` as one prefill, or as a prefill
/// of the first half then one token at a time.
template <class Scalar, class Step>
Matrix<Scalar> run_sequence(const Matrix<Scalar>& x, const Positions& pos, bool split,
                            Step step) {
  Matrix<Scalar> out(x.rows(), x.cols());
  const Index T = x.rows(), first = split ? T / 2 : T;
  std::vector<Index> chunks{first};
  for (Index t = first; t < T; ++t) chunks.push_back(1);
  Index done = 0;
  for (Index n : chunks) {
    if (n == 0) continue;
    Matrix<Scalar> y(n, x.cols());
    step(Matrix<Scalar>(x.middleRows(done, n)), Positions(pos.segment(done, n)), y);
    out.middleRows(done, n) = y;
    done += n;
  }
  return out;
}

/// The layer's RoPE inverse frequencies and softmax scale against the case's.
template <class Layer>
void check_constants(CaseResult& r, const std::string& io, const io::SafetensorsFile& f,
                     const Layer& layer, const Tolerances& tol) {
  const auto& inv_freq = layer.rope().inv_freq();
  add_check(r, io, "rope_inv_freq",
            Eigen::Map<const Eigen::VectorXd>(inv_freq.data(), static_cast<Index>(inv_freq.size())),
            read_2d<double>(f, "rope_inv_freq"), tol.constants);
  add_check(r, io, "attn_scale", Eigen::Matrix<double, 1, 1>(layer.config().softmax_scale()),
            Eigen::Matrix<double, 1, 1>(f.read_scalar<double>("attn_scale")), tol.constants);
}

template <class Scalar>
void check_mla(const io::Checkpoint& ckpt, CaseResult& r, const Tolerances& tol) {
  const MlaConfig cfg = io::parse_mla_config(ckpt.config());
  const auto layer = io::load_mla_layer<Scalar>(ckpt, cfg, 0);
  const Index H = cfg.num_attention_heads, N = cfg.qk_nope_head_dim, P = cfg.qk_rope_head_dim,
              R = cfg.kv_lora_rank, V = cfg.v_head_dim;
  for (const auto& io_path : io_files(ckpt.folder())) {
    const io::SafetensorsFile f(io_path);
    const std::string io = io_path.filename().string();
    const Matrix<Scalar> x = read_2d<Scalar>(f, "hidden_states");
    const Positions pos = read_positions(f);
    const Matrix<double> ref_out = read_2d<double>(f, "output");
    const Index T = x.rows();

    check_constants(r, io, f, layer, tol);

    Workspace ws;
    Matrix<Scalar> q(T, H * (N + P)), c(T, R + P);
    layer.project_query(x, pos, q, ws);
    layer.project_latent(x, pos, c, ws);
    Matrix<Scalar> q_nope(T, H * N), q_pe(T, H * P);
    for (Index h = 0; h < H; ++h) {
      q_nope.middleCols(h * N, N) = q.middleCols(h * (N + P), N);
      q_pe.middleCols(h * P, P) = q.middleCols(h * (N + P) + N, P);
    }
    add_check(r, io, "q_nope", q_nope, read_2d<double>(f, "q_nope"), tol.activations);
    add_check(r, io, "q_pe", q_pe, read_2d<double>(f, "q_pe"), tol.activations);
    add_check(r, io, "kv_latent", Matrix<Scalar>(c.leftCols(R)), read_2d<double>(f, "kv_latent"),
              tol.activations);
    add_check(r, io, "k_pe", Matrix<Scalar>(c.rightCols(P)), read_2d<double>(f, "k_pe"),
              tol.activations);

    for (MlaPath mla_path : {MlaPath::kAbsorbed, MlaPath::kNaive}) {
      auto cache = layer.make_latent_cache(T);
      Matrix<Scalar> heads(T, H * V);
      layer.attend(x, pos, cache, heads, ws, mla_path);
      add_check(r, io, std::string("attn_output_heads ") + to_string(mla_path), heads,
                read_2d<double>(f, "attn_output_heads"), tol.activations);
      for (bool split : {false, true}) {
        auto c2 = layer.make_latent_cache(T);
        const Matrix<Scalar> y = run_sequence(x, pos, split, [&](const auto& xs, const auto& ps,
                                                                 auto& ys) {
          layer.forward(xs, ps, c2, ys, ws, mla_path);
        });
        add_check(r, io, std::string("output ") + (split ? "prefill+decode " : "prefill ") +
                      to_string(mla_path), y, ref_out, tol.activations);
      }
    }
    for (bool split : {false, true}) {
      auto kv = layer.make_decompressed_cache(T);
      const Matrix<Scalar> y = run_sequence(x, pos, split, [&](const auto& xs, const auto& ps,
                                                               auto& ys) {
        layer.forward(xs, ps, kv, ys, ws);
      });
      add_check(r, io, std::string("output ") + (split ? "prefill+decode " : "prefill ") +
                    "naive_cached", y, ref_out, tol.activations);
    }
  }
}

template <class Scalar>
void check_gqa(const io::Checkpoint& ckpt, CaseResult& r, const Tolerances& tol) {
  const AttentionConfig cfg = io::parse_attention_config(ckpt.config());
  const auto layer = io::load_gqa_layer<Scalar>(ckpt, cfg, 0);
  const Index H = cfg.num_attention_heads, KV = cfg.num_key_value_heads, D = cfg.head_dim;
  for (const auto& io_path : io_files(ckpt.folder())) {
    const io::SafetensorsFile f(io_path);
    const std::string io = io_path.filename().string();
    const Matrix<Scalar> x = read_2d<Scalar>(f, "hidden_states");
    const Positions pos = read_positions(f);
    const Index T = x.rows();
    check_constants(r, io, f, layer, tol);
    Matrix<Scalar> q(T, H * D), k(T, KV * D), v(T, KV * D);
    layer.project_qkv(x, pos, q, k, v);
    add_check(r, io, "q", q, read_2d<double>(f, "q"), tol.activations);
    add_check(r, io, "k", k, read_2d<double>(f, "k"), tol.activations);
    add_check(r, io, "v", v, read_2d<double>(f, "v"), tol.activations);
    Workspace ws;
    for (bool split : {false, true}) {
      auto cache = layer.make_cache(T);
      const Matrix<Scalar> y = run_sequence(x, pos, split, [&](const auto& xs, const auto& ps,
                                                               auto& ys) {
        layer.forward(xs, ps, cache, ys, ws);
      });
      add_check(r, io, split ? "output prefill+decode" : "output prefill", y,
                read_2d<double>(f, "output"), tol.activations);
    }
  }
}

}  // namespace detail

/// Loads the case in `folder` with Scalar weights and runs every check (see the header comment).
/// Throws std::runtime_error when the folder cannot be read as a case.
template <class Scalar>
CaseResult check_reference_case(const std::filesystem::path& folder,
                                 Tolerances tol = default_tolerances<Scalar>()) {
  const io::Checkpoint ckpt(folder);
  MLA_CHECK_DATA(ckpt.has_config(), "'", folder.string(), "' has no config.json");
  CaseResult r;
  r.folder = folder.string();
  if (io::is_mla_config(ckpt.config())) {
    r.kind = "mla";
    detail::check_mla<Scalar>(ckpt, r, tol);
  } else {
    r.kind = "gqa";
    detail::check_gqa<Scalar>(ckpt, r, tol);
  }
  return r;
}

}  // namespace mla::conformance
