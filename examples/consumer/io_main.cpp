// Smallest use of the loaders (mla::io): write a one-tensor safetensors file in memory, read it
// back and check the values survive. Exits non-zero on a mismatch.
#include <cstdint>
#include <cstdio>
#include <vector>

#include <mla/io.hpp>

int main() {
  const std::vector<float> values = {1.0f, -2.5f, 0.125f, 3.0f, -0.0f, 448.0f};
  mla::io::SafetensorsWriter writer;
  writer.add("w", {2, 3}, values.data());
  const auto file = mla::io::SafetensorsFile::from_bytes(writer.to_bytes());
  const mla::Matrix<float> w = file.read_matrix<float>("w", 2, 3);
  bool same = true;
  for (mla::Index i = 0; i < w.size(); ++i) same = same && w.data()[i] == values[std::size_t(i)];
  std::printf("mla io consumer: safetensors round trip %s\n", same ? "exact" : "MISMATCH");
  return same ? 0 : 1;
}
