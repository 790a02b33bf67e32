// Fused bilinear hinge loss (DeViSE, Frome et al. 2013), one tile of classes at a time.
//
// The caller's BLAS computes a score tile S = U @ T[c0:c0+n].T (U = V @ M.T, B×dt);
// this kernel does everything else for that tile in one pass: hinge terms, per-row
// loss and violator counts, the hardest violator (negatives="max"), and, in place,
// the gradient dL/dS of the tile (1 where a negative violates the margin, else 0).
// The B×C score matrix is never formed: only one B×n tile exists at a time.
#pragma once
#include <cstdint>

#include "common/array.h"

namespace pyzsl {

struct HingeTileArgs {
  Array scores;      // B×n, float32/float64, contiguous: s_bj for classes [col0, col0+n).
                     // Overwritten with dL/ds_bj (0 or 1) when write_grad is set.
  Array positive;    // (B,) same dtype: s_{b,y_b}, the score of each row's true class.
  Array labels;      // (B,) int64: y_b in [0, C).
  Array class_mask;  // (C,) bool, or not given: classes allowed as negatives.
  Array loss;        // (B,) float64, accumulated: sum of hinge terms (sum mode).
  Array count;       // (B,) float64, accumulated: number of violating negatives (sum mode).
  Array best_value;  // (B,) float64, running: largest hinge term so far (max mode; start at 0).
  Array best_index;  // (B,) int64, running: its class, -1 if none (max mode).
  Array status;      // (1,) int32: set to 1 when a non-finite score is seen.
  int64_t col0 = 0;        // class index of the tile's first column.
  int64_t num_classes = 0; // C, for the mask's length.
  double margin = 0.1;
  bool hardest = false;    // negatives="max": keep the hardest violator instead of the sum.
  bool write_grad = false; // sum mode only: write dL/ds into scores.
};

// Validates the arguments and runs the CPU or CUDA kernel on the arrays' device.
// Returns the number of violating (row, class) pairs in the tile on the CPU (the
// caller skips the tile's gradient GEMMs when it is 0: their contribution is
// exactly zero), and -1 on CUDA (counting would need a host synchronisation).
int64_t hinge_tile(const HingeTileArgs& args, uintptr_t stream);

int64_t hinge_tile_cpu(const HingeTileArgs& args);
#ifdef WITH_CUDA
void hinge_tile_cuda(const HingeTileArgs& args, uintptr_t stream);
#endif

}  // namespace pyzsl
