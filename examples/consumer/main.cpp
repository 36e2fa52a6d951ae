// Smallest use of the installed library: build a tiny MLA layer, decode one token on both paths
// and check they agree. Exits non-zero on a mismatch.
#include <cmath>
#include <cstdio>

#include <mla/mla.hpp>

int main() {
  mla::MlaConfig cfg;
  cfg.hidden_size = 32;
  cfg.num_attention_heads = 2;
  cfg.kv_lora_rank = 16;
  cfg.qk_nope_head_dim = 8;
  cfg.qk_rope_head_dim = 4;
  cfg.v_head_dim = 8;
  mla::MultiHeadLatentAttention<double>::Weights w;
  auto fill = [](mla::Index r, mla::Index c, double s) {
    mla::Matrix<double> m(r, c);
    for (mla::Index i = 0; i < m.size(); ++i) m.data()[i] = std::sin(s * double(i + 1));
    return m;
  };
  w.q_proj.weight = fill(2 * 12, 32, 0.37) * 0.2;
  w.kv_a_proj_with_mqa.weight = fill(20, 32, 0.11) * 0.2;
  w.kv_a_layernorm = mla::Vector<double>::Ones(16);
  w.kv_b_proj.weight = fill(2 * 16, 16, 0.23) * 0.3;
  w.o_proj.weight = fill(32, 16, 0.53) * 0.3;
  mla::MultiHeadLatentAttention<double> layer(cfg, w);

  const mla::Matrix<double> x = fill(5, 32, 0.71);
  const mla::Positions pos = mla::Positions::LinSpaced(5, 0, 4);
  auto a = layer.make_latent_cache(5), b = layer.make_latent_cache(5);
  const mla::Matrix<double> ya = layer.forward(x, pos, a, mla::MlaPath::kAbsorbed);
  const mla::Matrix<double> yb = layer.forward(x, pos, b, mla::MlaPath::kNaive);
  const double err = (ya - yb).cwiseAbs().maxCoeff();
  std::printf("mla %d.%d.%d consumer: absorbed vs naive max diff %.3g\n", mla::kVersionMajor,
              mla::kVersionMinor, mla::kVersionPatch, err);
  return err < 1e-12 ? 0 : 1;
}
