// Host-side helpers of the CUDA code: MLA_CUDA_CHECK (a CUDA runtime error as an exception that
// names the call, file and line), and DeviceBuffer, an owning device allocation (cudaMalloc'd
// once, grown only on request, freed on destruction) used by the plan workspace and the tests.
#pragma once

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include <cuda_runtime.h>

namespace mla {
namespace cuda {

/// A CUDA runtime call failed; what() names the call, the error and where.
class CudaError : public std::runtime_error {
 public:
  explicit CudaError(const std::string& what) : std::runtime_error(what) {}
};

namespace internal {
inline void cuda_check(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return;
  std::ostringstream os;
  os << call << " failed: " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e) << ") at "
     << file << ":" << line;
  throw CudaError(os.str());
}
}  // namespace internal

#define MLA_CUDA_CHECK(call) ::mla::cuda::internal::cuda_check((call), #call, __FILE__, __LINE__)

/// An owning device buffer of `T`. reserve() reallocates (without keeping the contents) only when
/// more elements are asked for than held; nothing else allocates.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { reserve(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    swap(o);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }

  /// Makes room for `n` elements; reallocates only if n > capacity() (contents not kept).
  void reserve(std::size_t n) {
    if (n <= capacity_) return;
    if (ptr_) MLA_CUDA_CHECK(cudaFree(ptr_));
    ptr_ = nullptr;
    capacity_ = 0;
    MLA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T)));
    capacity_ = n;
  }
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  std::size_t capacity() const { return capacity_; }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(capacity_, o.capacity_);
  }
  T* ptr_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace cuda
}  // namespace mla
