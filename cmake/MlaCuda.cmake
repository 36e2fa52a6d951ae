# The CUDA part of mla, included from the top-level CMakeLists.txt: when a CUDA compiler is
# found, the header-only target mla::cuda (include/mla/cuda/*.cuh, compiled by the consumer with
# nvcc) and, when requested, its test (tests/cuda) and benchmark (benchmarks/cuda). Without nvcc
# nothing here changes the build.
#
# Architectures: sm_90a (the Hopper build the benchmark numbers come from) and sm_80 (the portable
# mma.sync path on Ampere and later), unless CMAKE_CUDA_ARCHITECTURES is set by the caller.
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "mla: no CUDA compiler found: mla::cuda, its test and benchmark are skipped")
else()
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90a 80)
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)

  add_library(mla_cuda INTERFACE)
  add_library(mla::cuda ALIAS mla_cuda)
  target_include_directories(mla_cuda INTERFACE
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_compile_features(mla_cuda INTERFACE cuda_std_17)
  target_link_libraries(mla_cuda INTERFACE CUDA::cudart)

  if(MLA_BUILD_TESTS)
    find_package(GTest QUIET)
    if(GTest_FOUND)
      # The reference side (Eigen, the CPU FP8 row codec) is built by the C++ compiler, the GPU
      # side by nvcc; the test skips, saying why, where no GPU is present.
      add_executable(test_cuda_decode tests/cuda/test_cuda_decode.cu tests/cuda/cuda_decode_case.cpp)
      target_include_directories(test_cuda_decode PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/tests/cuda)
      target_link_libraries(test_cuda_decode PRIVATE mla::cuda mla::mla GTest::gtest GTest::gtest_main)
      add_test(NAME cuda.test_cuda_decode COMMAND test_cuda_decode)
    endif()
  endif()
  if(MLA_BUILD_BENCHMARKS)
    add_executable(cuda_decode_bench benchmarks/cuda/cuda_decode_bench.cu)
    target_link_libraries(cuda_decode_bench PRIVATE mla::cuda CUDA::cublas)
  endif()
endif()
