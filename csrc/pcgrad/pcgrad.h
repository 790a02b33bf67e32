// Gram matrix and batched PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").
//
// PCGrad projects each task gradient g_i, task by task in a random order, onto the normal
// plane of every original g_j it conflicts with (g_i'·g_j < 0, g_i' the current projection),
// then sums the projections. Every projected g_i' is a linear combination Σ_j c_ij g_j of the
// original gradients, and every dot product it needs is one of the Gram matrix, so:
//   pass 1  Gram   K = G Gᵀ (T×T), one read of G, accumulated in float64;
//   solve          c_ij from K alone (T³ flops, on the device: no host synchronisation);
//   pass 2  combine out = Σ_j w_j g_j with w_j = Σ_i c_ij (÷T for the mean), one read of G.
// Memory traffic: 2 reads of G and one write of the P-vector; extra memory O(T²) per block
// (plus, on CUDA, O(#CUDA blocks · T²) partial Grams).
//
// Batched: G may be a list of L blocks (T×P_l each, e.g. one per layer) that share the task
// order: each block gets its own Gram, coefficients and update (layer-wise PCGrad) in the same
// three launches.
#pragma once
#include <cstdint>
#include <vector>

#include "common/array.h"

namespace pyzsl {

struct PCGradArgs {
  // L gradient blocks, each T×P_l: float32 or float64 (all the same dtype and device),
  // unit column stride, any row stride ≥ P_l (a row slice of a bigger buffer is fine).
  std::vector<Array> blocks;
  // T×T int64, contiguous, on the blocks' device: row i is a permutation of 0..T-1, the
  // order in which g_i is projected against the others (its own index is skipped).
  // Not given: compute the Gram (and diagnostics) only.
  Array order;
  // L outputs (P_l,), the blocks' dtype, contiguous: the PCGrad update of each block.
  // Empty: no combine pass (the weights are still written when `order` is given).
  std::vector<Array> out;
  Array gram;       // L×T×T float64, contiguous, written: the Gram of each block.
  Array weights;    // L×T float64, contiguous, written when `order` is given: out_l = w_lᵀ G_l.
  Array cosine;     // optional L×T×T float64: K_ij / sqrt(K_ii K_jj), 0 where a norm is 0.
  Array conflicts;  // optional (L,) int64: number of pairs i < j with K_ij < 0.
  // (1,) int32, written (zeroed first, then or-ed): 1 = a Gram is not finite (NaN/inf in G, or |g|² overflows float64),
  // 2 = a row of `order` is not a permutation (CUDA only: the CPU throws). With status ≠ 0 the
  // weights and updates are NaN; the caller raises.
  Array status;
  // CUDA: uint8 scratch of at least pcgrad_workspace_bytes(...) bytes on the blocks' device.
  Array workspace;
  bool mean = false;  // reduction="mean": the update is divided by T.
};

// Validates the arguments and runs the CPU or CUDA implementation on the blocks' device,
// on `stream` (CUDA; ignored on the CPU).
void pcgrad(const PCGradArgs& args, uintptr_t stream);

// Bytes of CUDA scratch that pcgrad() needs for T tasks, blocks of P_l columns of `dtype`
// on CUDA device `device_index` (the block descriptors and the partial Grams of the CUDA
// blocks); 0 for the CPU (device_index < 0).
int64_t pcgrad_workspace_bytes(int64_t T, const std::vector<int64_t>& P, DType dtype, int device_index);

// Which CPU code path the Gram and combine passes take: "avx512", "avx2" or "generic",
// the best the CPU supports unless PYZSL_PCGRAD_ISA asks for a lower one.
const char* pcgrad_cpu_isa();

// ---- shared by the CPU and CUDA implementations ------------------------------------------

#ifdef __CUDACC__
#define PYZSL_HOST_DEVICE __host__ __device__
#else
#define PYZSL_HOST_DEVICE
#endif

// Index of the pair (i ≤ j) in the packed upper triangle of a T×T matrix.
PYZSL_HOST_DEVICE inline int64_t packed_index(int64_t i, int64_t j, int64_t T) { return i * T - i * (i - 1) / 2 + (j - i); }

void pcgrad_cpu(const PCGradArgs& args);
#ifdef WITH_CUDA
void pcgrad_cuda(const PCGradArgs& args, uintptr_t stream);
int64_t pcgrad_cuda_workspace_bytes(int64_t T, const std::vector<int64_t>& P, DType dtype, int device_index);
#endif

}  // namespace pyzsl
