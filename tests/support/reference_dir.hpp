// Where the Hugging Face reference vectors are: $MLA_REFERENCE_DIR, else the shared/reference
// folder beside the repository (compiled in as MLA_REFERENCE_DIR_DEFAULT).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace mla::testing {

inline std::filesystem::path reference_dir() {
  if (const char* env = std::getenv("MLA_REFERENCE_DIR"); env && *env) return env;
  return MLA_REFERENCE_DIR_DEFAULT;
}

}  // namespace mla::testing
