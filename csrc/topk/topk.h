// Fused similarity top-k: a score tile is reduced into a running per-row top-k.
//
// The caller's BLAS computes S = U @ T[c0:c0+n].T one tile at a time (U = V @ M.T for
// bilinear scores, U = queries for retrieval); this kernel adds the class bias (CSLS's
// -r_T/2, calibrated stacking's penalty), drops masked classes and merges the tile into
// the running top-k. Nothing larger than one tile is ever formed: never B×C.
#pragma once
#include <cstdint>

#include "common/array.h"

namespace pyzsl {

struct TopkTileArgs {
  Array scores;      // B×n, float32/float64, contiguous: s_bj for columns [col0, col0+n).
  Array class_bias;  // (C,) same dtype, or not given: added to every row's scores.
  Array class_mask;  // (C,) bool, or not given: false columns are never returned.
  Array values;      // B×k same dtype, running top-k, sorted descending; start at -inf.
  Array indices;     // B×k int64, running, -1 where fewer than k columns qualified.
  Array status;      // (1,) int32: set to 1 when a non-finite score is seen.
  int64_t col0 = 0;         // column index of the tile's first column.
  int64_t num_classes = 0;  // C, the length of class_bias / class_mask.
  int threads = 0;          // CPU: OpenMP threads for the scan, 0 = OpenMP's default.
};

// Ties: the smaller column index ranks first (tiles must arrive in increasing col0).
void topk_tile(const TopkTileArgs& args, uintptr_t stream);

void topk_tile_cpu(const TopkTileArgs& args);
#ifdef WITH_CUDA
void topk_tile_cuda(const TopkTileArgs& args, uintptr_t stream);
#endif

}  // namespace pyzsl
