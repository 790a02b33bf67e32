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
}  // namespace pyzsl
#endif
