// OpenMP helpers. Rows are independent in every CPU kernel: we split rows across threads.
#pragma once
#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyzsl {

// Below this many elements a tile is swept by one thread: waking the team costs more.
constexpr long long kParallelMinElems = 1 << 15;

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace pyzsl
