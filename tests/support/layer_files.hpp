// In-memory checkpoints for the loader tests: a layer's weights under their Hugging Face names
// (`model.layers.0.self_attn.<name>`), written to safetensors bytes and opened again, so a test
// can drop, reshape or retype one tensor and see what load_*_layer says about it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mla/io/safetensors.hpp"
#include "support/random.hpp"

namespace mla::testing {

/// (name under the layer prefix, values): a vector is stored as a 1-column matrix.
using NamedTensors = std::vector<std::pair<std::string, Matrix<float>>>;

/// Adds `tensors` to `w` under layer `layer`'s attention prefix.
inline void add_layer_tensors(io::SafetensorsWriter& w, int layer, const NamedTensors& tensors) {
  const std::string prefix = "model.layers." + std::to_string(layer) + ".self_attn.";
  for (const auto& [name, m] : tensors) {
    if (m.cols() == 1)
      w.add(prefix + name, {m.rows()}, m.data());
    else
      w.add_eigen(prefix + name, m);
  }
}

/// A safetensors file named `file_name` holding `tensors` under layer 0's attention prefix.
inline io::SafetensorsFile file_with(const NamedTensors& tensors,
                                     const std::string& file_name = "test.safetensors") {
  io::SafetensorsWriter w;
  add_layer_tensors(w, 0, tensors);
  return io::SafetensorsFile::from_bytes(w.to_bytes(), file_name);
}

/// As file_with(), but the tensor `integer_name` is stored as I64 (its values truncated): a
/// mislabelled or corrupted weight.
inline io::SafetensorsFile file_with_integer(const NamedTensors& tensors,
                                             const std::string& integer_name,
                                             const std::string& file_name = "ints.safetensors") {
  io::SafetensorsWriter w;
  for (const auto& t : tensors) {
    if (t.first != integer_name) {
      add_layer_tensors(w, 0, {t});
      continue;
    }
    const Matrix<std::int64_t> ints = t.second.cast<std::int64_t>();
    std::vector<std::int64_t> shape{ints.rows()};
    if (ints.cols() != 1) shape.push_back(ints.cols());
    w.add("model.layers.0.self_attn." + t.first, shape, ints.data());
  }
  return io::SafetensorsFile::from_bytes(w.to_bytes(), file_name);
}

/// `tensors` without the one called `name`.
inline NamedTensors without(NamedTensors tensors, const std::string& name) {
  tensors.erase(std::find_if(tensors.begin(), tensors.end(),
                             [&](const auto& t) { return t.first == name; }));
  return tensors;
}

/// The checkpoint tensors of GQA weights `w` (biases when the weights have them).
inline NamedTensors gqa_tensors(const GroupedQueryAttention<float>::Weights& w) {
  NamedTensors t;
  using Named = std::pair<const char*, const Linear<float>*>;
  for (const auto& [name, l] : {Named{"q_proj", &w.q_proj}, Named{"k_proj", &w.k_proj},
                                Named{"v_proj", &w.v_proj}, Named{"o_proj", &w.o_proj}}) {
    t.push_back({std::string(name) + ".weight", l->weight});
    if (l->has_bias()) t.push_back({std::string(name) + ".bias", l->bias});
  }
  return t;
}

/// The checkpoint tensors of random GQA weights for `c`.
inline NamedTensors gqa_tensors(const AttentionConfig& c, Rng& rng) {
  return gqa_tensors(random_gqa_weights<float>(c, rng));
}

/// The checkpoint tensors of MLA weights `w`: q_a_proj / q_a_layernorm / q_b_proj or q_proj,
/// whichever the weights have.
inline NamedTensors mla_tensors(const MultiHeadLatentAttention<float>::Weights& w) {
  NamedTensors t;
  auto add = [&](const char* name, const Linear<float>& l) {
    if (l.weight.size() == 0) return;
    t.push_back({std::string(name) + ".weight", l.weight});
    if (l.has_bias()) t.push_back({std::string(name) + ".bias", l.bias});
  };
  add("q_proj", w.q_proj);
  add("q_a_proj", w.q_a_proj);
  if (w.q_a_layernorm.size() != 0) t.push_back({"q_a_layernorm.weight", w.q_a_layernorm});
  add("q_b_proj", w.q_b_proj);
  add("kv_a_proj_with_mqa", w.kv_a_proj_with_mqa);
  t.push_back({"kv_a_layernorm.weight", w.kv_a_layernorm});
  add("kv_b_proj", w.kv_b_proj);
  add("o_proj", w.o_proj);
  return t;
}

}  // namespace mla::testing
