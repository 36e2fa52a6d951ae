// mla version. CMake reads MLA_VERSION_{MAJOR,MINOR,PATCH} from this file, so it is the
// one place the version lives.
#pragma once

#define MLA_VERSION_MAJOR 0
#define MLA_VERSION_MINOR 1
#define MLA_VERSION_PATCH 0

namespace mla {
inline constexpr int kVersionMajor = MLA_VERSION_MAJOR;
inline constexpr int kVersionMinor = MLA_VERSION_MINOR;
inline constexpr int kVersionPatch = MLA_VERSION_PATCH;
}  // namespace mla
