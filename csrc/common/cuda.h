// CUDA helpers shared by the .cu files. Compiled only when WITH_CUDA is defined.
#pragma once
#ifdef WITH_CUDA
#include <cuda_runtime.h>

#include "common/check.h"

#define PYZSL_CUDA_CHECK(expr)                                                        \
  do {                                                                                \
    cudaError_t err_ = (expr);                                                        \
    PYZSL_CHECK(err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(err_), " at ", \
                __FILE__, ":", __LINE__);                                             \
  } while (0)

namespace pyzsl {
inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Makes the data's device current for a launch (a stream of cuda:1 cannot take a launch while
// cuda:0 is current) and restores the caller's device after.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    PYZSL_CUDA_CHECK(cudaGetDevice(&prev));
    if (device >= 0 && prev != device) PYZSL_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != prev && prev >= 0) cudaSetDevice(prev);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
};
}  // namespace pyzsl
#endif
