// CUDA Gram + PCGrad: three launches on the caller's stream; the host never waits for the
// device, except as the small descriptor upload from pageable memory may (see below).
//
//   gram_kernel     one read of G. Each warp owns a stream of 32-column chunks and keeps
//                   the whole (≤ 32×32) upper Gram in FP64 tensor-core accumulators
//                   (mma.m8n8k4.f64, sm_80+): a lane loads 8 consecutive columns of one row
//                   per 8-row block with 16-byte loads, and the k index of the mma runs over
//                   those columns (any column order is a valid k order for a sum over
//                   columns). Products of float32 are exact in float64. The warps of a block
//                   are summed in fixed order and each block writes one packed partial Gram.
//                   T > 32: 32-row super-blocks, one grid row per super-block pair.
//   solve_kernel    one CUDA block per gradient block: sums the partials in fixed order
//                   (deterministic), checks finiteness and the order, and solves the PCGrad
//                   coefficients from the Gram (a warp per task row), writing w = Σ_i c_i.
//   combine_kernel  one read of G: out = Σ_j w_j g_j in float64, 16-byte loads and stores.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/cuda.h"
#include "pcgrad/pcgrad.h"

namespace pyzsl {

namespace {

constexpr int kGramWarps = 8;           // 256 threads per Gram block
constexpr int kChunk = 32;              // columns per warp step: 4 lanes × 8 columns per row
constexpr int kCombineThreads = 256;
constexpr int kSolveThreads = 512;
constexpr int kSolveSmemBytes = 40 * 1024;  // Gram and coefficients in shared memory up to T = 50

// One gradient block as the kernels see it (lives in the workspace, uploaded per call).
struct BlockDesc {
  const void* g;     // T×P, row stride ld elements
  void* out;         // (P,) or nullptr
  int64_t P;
  int64_t ld;
  int32_t gblock0;   // its CUDA blocks in the Gram grid: [gblock0, gblock0 + gnblocks)
  int32_t gnblocks;
  int32_t cblock0;   // and in the combine grid
  int32_t cnblocks;
};

int sm_count(int device) {
  static int cache[64] = {0};
  if (device >= 0 && device < 64 && cache[device] > 0) return cache[device];
  int n = 0;
  PYZSL_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) cache[device] = n;
  return n;
}

size_t align256(size_t x) { return (x + 255) / 256 * 256; }

// Grid sizes and workspace layout: a pure function of (T, P_l, SM count), so that the
// workspace size asked for beforehand matches what the launch uses.
struct Plan {
  int64_t T = 0, L = 0, npairs = 0, nsuper = 0;
  int64_t gblocks = 0, cblocks = 0;
  std::vector<BlockDesc> descs;
  std::vector<int32_t> gmap, cmap;  // CUDA block -> gradient block
  bool solve_in_smem = false;
  size_t off_gmap = 0, off_cmap = 0, off_partial = 0, off_coef = 0, upload_bytes = 0, bytes = 0;
};

int gram_blocks_per_sm(DType dtype, int64_t T, int device);

Plan make_plan(int64_t T, const std::vector<int64_t>& P, DType dtype, int device) {
  Plan p;
  p.T = T;
  p.L = static_cast<int64_t>(P.size());
  p.npairs = T * (T + 1) / 2;
  p.nsuper = (T + 31) / 32;
  // one Gram grid row per pair of 32-task super-blocks, and a grid has at most 65535 rows
  PYZSL_CHECK(p.nsuper * (p.nsuper - 1) / 2 <= 65535, "G: the CUDA Gram takes at most 11585 tasks, got T=", T,
              " (pass CPU tensors for more)");
  const int sms = sm_count(device);
  int64_t total = 0;
  for (int64_t x : P) total += x;
  // Gram: as many blocks as fit on the GPU at once (one wave: every warp streams its share
  // of the chunks; ~48-64 KB of loads in flight per SM); more would only grow the partials
  // that the solve kernel sums. Combine: bandwidth-bound, 4 blocks of 256 threads per SM.
  const double gtarget = static_cast<double>(gram_blocks_per_sm(dtype, T, device)) * sms;
  const double ctarget = 4.0 * sms;
  p.descs.resize(p.L);
  for (int64_t l = 0; l < p.L; ++l) {
    const double share = total > 0 ? static_cast<double>(P[l]) / static_cast<double>(total) : 0.0;
    const int64_t gmax = std::max<int64_t>(1, (P[l] + kChunk * kGramWarps - 1) / (kChunk * kGramWarps));
    const int64_t cmax = std::max<int64_t>(1, (P[l] + 4 * kCombineThreads - 1) / (4 * kCombineThreads));
    const int64_t gn = std::min(gmax, std::max<int64_t>(1, static_cast<int64_t>(std::ceil(gtarget * share))));
    const int64_t cn = std::min(cmax, std::max<int64_t>(1, static_cast<int64_t>(std::ceil(ctarget * share))));
    BlockDesc& d = p.descs[l];
    d = BlockDesc{};
    d.P = P[l];
    d.gblock0 = static_cast<int32_t>(p.gblocks);
    d.gnblocks = static_cast<int32_t>(gn);
    d.cblock0 = static_cast<int32_t>(p.cblocks);
    d.cnblocks = static_cast<int32_t>(cn);
    p.gblocks += gn;
    p.cblocks += cn;
    p.gmap.insert(p.gmap.end(), gn, static_cast<int32_t>(l));
    p.cmap.insert(p.cmap.end(), cn, static_cast<int32_t>(l));
  }
  PYZSL_CHECK(p.gblocks < (int64_t(1) << 31) && p.cblocks < (int64_t(1) << 31),
              "G: too many gradient blocks for one launch");
  p.solve_in_smem = static_cast<size_t>(2 * T * T) * sizeof(double) <= kSolveSmemBytes;
  size_t off = align256(p.L * sizeof(BlockDesc));
  p.off_gmap = off;
  off = align256(off + p.gblocks * sizeof(int32_t));
  p.off_cmap = off;
  off = align256(off + p.cblocks * sizeof(int32_t));
  p.upload_bytes = off;
  p.off_partial = off;
  off = align256(off + static_cast<size_t>(p.gblocks) * p.npairs * sizeof(double));
  p.off_coef = off;
  if (!p.solve_in_smem) off = align256(off + static_cast<size_t>(p.L) * T * T * sizeof(double));
  p.bytes = off;
  return p;
}

// Sets the current device for the scope (the pointers' device), restores it after.
// ---- Gram ---------------------------------------------------------------------------------

// D += A·B for one 8×8×4 FP64 tile. A (8×4, row): lane holds A[lane/4][lane%4];
// B (4×8, col): lane holds B[lane%4][lane/4]; D: lane holds D[lane/4][2(lane%4) + {0,1}].
__device__ __forceinline__ void mma884(double (&d)[2], double a, double b) {
  asm("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0,%1}, {%2}, {%3}, {%0,%1};\n"
      : "+d"(d[0]), "+d"(d[1])
      : "d"(a), "d"(b));
}

// 8 consecutive elements at p (16-byte aligned) into x.
__device__ __forceinline__ void load8_vec(const float* p, float (&x)[8]) {
  const float4 u = __ldg(reinterpret_cast<const float4*>(p));
  const float4 v = __ldg(reinterpret_cast<const float4*>(p) + 1);
  x[0] = u.x; x[1] = u.y; x[2] = u.z; x[3] = u.w;
  x[4] = v.x; x[5] = v.y; x[6] = v.z; x[7] = v.w;
}
__device__ __forceinline__ void load8_vec(const double* p, double (&x)[8]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const double2 u = __ldg(reinterpret_cast<const double2*>(p) + k);
    x[2 * k] = u.x;
    x[2 * k + 1] = u.y;
  }
}

// Loads this lane's 8 columns [c, c+8) of row `row` (zeros outside the matrix).
template <typename S, bool VEC>
__device__ __forceinline__ void load_row8(const S* row, bool valid, int64_t c, int64_t P, S (&x)[8]) {
  if (VEC && valid && c + 8 <= P) {
    load8_vec(row + c, x);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = (valid && c + e < P) ? row[c + e] : S(0);
  }
}

// Partial Gram of one super-block pair (I, J) (I == J when DIAG) over this CUDA block's
// chunks of its gradient block. NB: 8-row blocks per super-block (ceil(T/8) when T ≤ 32).
template <typename S, int NB, bool DIAG, bool VEC>
__global__ void __launch_bounds__(kGramWarps * 32)
gram_kernel(const BlockDesc* __restrict__ descs, const int32_t* __restrict__ gmap, int T,
            int nsuper, int64_t npairs, double* __restrict__ partial) {
  constexpr int NT = DIAG ? NB * (NB + 1) / 2 : NB * NB;  // 8×8 tiles
  __shared__ double red[NT * 64];
  const BlockDesc d = descs[gmap[blockIdx.x]];
  int I = blockIdx.y, J = blockIdx.y;
  if (!DIAG) {  // blockIdx.y enumerates the pairs I < J
    int t = blockIdx.y;
    I = 0;
    while (t >= nsuper - 1 - I) {
      t -= nsuper - 1 - I;
      ++I;
    }
    J = I + 1 + t;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 2, q = lane & 3;
  const S* g = static_cast<const S*>(d.g);
  const S* ra[NB];
  const S* rb[NB];
  bool va[NB], vb[NB];
#pragma unroll
  for (int b = 0; b < NB; ++b) {
    const int ia = 32 * I + 8 * b + r, ib = 32 * J + 8 * b + r;
    va[b] = ia < T;
    vb[b] = ib < T;
    ra[b] = g + static_cast<int64_t>(va[b] ? ia : 0) * d.ld;
    rb[b] = g + static_cast<int64_t>(vb[b] ? ib : 0) * d.ld;
  }
  double acc[NT][2];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = 0.0;

  const int64_t nchunks = (d.P + kChunk - 1) / kChunk;
  const int64_t stride = static_cast<int64_t>(d.gnblocks) * kGramWarps;
  for (int64_t ch = static_cast<int64_t>(blockIdx.x - d.gblock0) * kGramWarps + warp; ch < nchunks;
       ch += stride) {
    const int64_t c = ch * kChunk + 8 * q;
    S xa[NB][8];
    S xb[DIAG ? 1 : NB][8];
#pragma unroll
    for (int b = 0; b < NB; ++b) load_row8<S, VEC>(ra[b], va[b], c, d.P, xa[b]);
    if (!DIAG) {
#pragma unroll
      for (int b = 0; b < NB; ++b) load_row8<S, VEC>(rb[b], vb[b], c, d.P, xb[DIAG ? 0 : b]);
    }
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      double a[NB], bv[NB];
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        a[b] = static_cast<double>(xa[b][s]);
        bv[b] = DIAG ? a[b] : static_cast<double>(xb[DIAG ? 0 : b][s]);
      }
      int t = 0;
#pragma unroll
      for (int bi = 0; bi < NB; ++bi)
#pragma unroll
        for (int bj = DIAG ? bi : 0; bj < NB; ++bj, ++t) mma884(acc[t], a[bi], bv[bj]);
    }
  }

  // Sum the warps in fixed order (deterministic), then write the packed pairs i ≤ j.
  for (int w = 0; w < kGramWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int idx = t * 64 + r * 8 + 2 * q + e;
          red[idx] = (w == 0 ? 0.0 : red[idx]) + acc[t][e];
        }
    }
    __syncthreads();
  }
  double* out = partial + static_cast<int64_t>(blockIdx.x) * npairs;
  for (int e = threadIdx.x; e < NT * 64; e += blockDim.x) {
    int t = e / 64, bi = 0, bj = 0;
    for (int k = t;;) {  // tile t -> (bi, bj), in the order of the mma loop above
      const int row = DIAG ? NB - bi : NB;
      if (k < row) {
        bj = (DIAG ? bi : 0) + k;
        break;
      }
      k -= row;
      ++bi;
    }
    const int64_t i = 32 * I + 8 * bi + (e % 64) / 8, j = 32 * J + 8 * bj + e % 8;
    if (i < T && j < T && i <= j) out[packed_index(i, j, T)] = red[e];
  }
}

// ---- solve --------------------------------------------------------------------------------

__global__ void __launch_bounds__(kSolveThreads)
solve_kernel(const BlockDesc* __restrict__ descs, int T, int64_t npairs,
             const double* __restrict__ partial, const int64_t* __restrict__ order, bool mean,
             double* __restrict__ gram, double* __restrict__ weights, double* __restrict__ cosine,
             int64_t* __restrict__ conflicts, int32_t* __restrict__ status, double* coef_scratch,
             bool in_smem) {
  extern __shared__ double sm[];
  __shared__ int n_conflicts;
  const int l = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5,
            nwarps = blockDim.x >> 5;
  const int64_t TT = static_cast<int64_t>(T) * T;
  const BlockDesc d = descs[l];
  double* Kg = gram + l * TT;
  double* K = in_smem ? sm : Kg;
  double* C = in_smem ? sm + TT : coef_scratch + l * TT;
  if (tid == 0) n_conflicts = 0;

  // 1. Gram = Σ of the partials of this gradient block's CUDA blocks, in block order.
  int bad = 0;
  for (int64_t e = tid; e < TT; e += blockDim.x) {
    const int64_t i = e / T, j = e % T;
    if (i > j) continue;
    const int64_t p = packed_index(i, j, T);
    double s = 0.0;
    for (int b = d.gblock0; b < d.gblock0 + d.gnblocks; ++b) s += partial[b * npairs + p];
    K[i * T + j] = s;
    K[j * T + i] = s;
    if (in_smem) {
      Kg[i * T + j] = s;
      Kg[j * T + i] = s;
    }
    bad |= !isfinite(s);
  }
  bad = __syncthreads_or(bad);
  int bad_order = 0;
  if (order != nullptr) {
    for (int i = warp; i < T; i += nwarps)
      for (int a = lane; a < T; a += 32) {
        const int64_t v = order[static_cast<int64_t>(i) * T + a];
        if (v < 0 || v >= T) {
          bad_order = 1;
          continue;
        }
        for (int b = 0; b < a; ++b) bad_order |= order[static_cast<int64_t>(i) * T + b] == v;
      }
  }
  bad_order = __syncthreads_or(bad_order);
  if (bad || bad_order) {
    if (tid == 0) atomicOr(status, (bad ? 1 : 0) | (bad_order ? 2 : 0));
    if (order != nullptr)
      for (int j = tid; j < T; j += blockDim.x) weights[static_cast<int64_t>(l) * T + j] = nan("");
    return;  // uniform across the block
  }

  // 2. Coefficients: a warp per task row i; lane m%32 owns c_im.
  if (order != nullptr) {
    for (int i = warp; i < T; i += nwarps) {
      double* ci = C + static_cast<int64_t>(i) * T;
      for (int m = lane; m < T; m += 32) ci[m] = m == i ? 1.0 : 0.0;
      __syncwarp();
      for (int s = 0; s < T; ++s) {
        const int k = static_cast<int>(order[static_cast<int64_t>(i) * T + s]);
        if (k == i) continue;
        const double kk = K[static_cast<int64_t>(k) * T + k];
        if (!(kk > 0)) continue;  // a zero gradient has nothing to project onto
        double part = 0.0;
        for (int m = lane; m < T; m += 32) part += ci[m] * K[static_cast<int64_t>(m) * T + k];
        // xor butterfly: every lane ends with bit-identical sums, so the branch is uniform
        for (int off = 16; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
        if (part < 0 && lane == (k & 31)) ci[k] -= part / kk;
        __syncwarp();
      }
    }
    __syncthreads();
    const double scale = mean ? 1.0 / static_cast<double>(T) : 1.0;
    for (int j = tid; j < T; j += blockDim.x) {
      double s = 0.0;
      for (int i = 0; i < T; ++i) s += C[static_cast<int64_t>(i) * T + j];
      weights[static_cast<int64_t>(l) * T + j] = s * scale;
    }
  }

  // 3. Diagnostics.
  int mine = 0;
  for (int64_t e = tid; e < TT; e += blockDim.x) {
    const int64_t i = e / T, j = e % T;
    const double kij = K[e];
    if (i < j && kij < 0) ++mine;
    if (cosine != nullptr) {
      const double dd = K[i * T + i] * K[j * T + j];
      cosine[l * TT + e] = dd > 0 ? fmin(1.0, fmax(-1.0, kij / sqrt(dd))) : 0.0;
    }
  }
  if (conflicts != nullptr) {
    if (mine) atomicAdd(&n_conflicts, mine);
    __syncthreads();
    if (tid == 0) conflicts[l] = n_conflicts;
  }
}

// ---- combine ------------------------------------------------------------------------------

__device__ __forceinline__ void load4(const float* p, double (&x)[4]) {
  const float4 u = __ldcs(reinterpret_cast<const float4*>(p));
  x[0] = u.x; x[1] = u.y; x[2] = u.z; x[3] = u.w;
}
__device__ __forceinline__ void load4(const double* p, double (&x)[4]) {
  const double2 u = __ldcs(reinterpret_cast<const double2*>(p));
  const double2 v = __ldcs(reinterpret_cast<const double2*>(p) + 1);
  x[0] = u.x; x[1] = u.y; x[2] = v.x; x[3] = v.y;
}
__device__ __forceinline__ void store4(float* p, const double (&s)[4]) {
  __stcs(reinterpret_cast<float4*>(p), make_float4(static_cast<float>(s[0]), static_cast<float>(s[1]),
                                                   static_cast<float>(s[2]), static_cast<float>(s[3])));
}
__device__ __forceinline__ void store4(double* p, const double (&s)[4]) {
  __stcs(reinterpret_cast<double2*>(p), make_double2(s[0], s[1]));
  __stcs(reinterpret_cast<double2*>(p) + 1, make_double2(s[2], s[3]));
}

template <typename S, bool VEC>
__global__ void __launch_bounds__(kCombineThreads)
combine_kernel(const BlockDesc* __restrict__ descs, const int32_t* __restrict__ cmap, int T,
               const double* __restrict__ weights) {
  extern __shared__ double w[];
  const int l = cmap[blockIdx.x];
  const BlockDesc d = descs[l];
  for (int j = threadIdx.x; j < T; j += blockDim.x) w[j] = weights[static_cast<int64_t>(l) * T + j];
  __syncthreads();
  const S* g = static_cast<const S*>(d.g);
  S* out = static_cast<S*>(d.out);
  const int64_t t0 = static_cast<int64_t>(blockIdx.x - d.cblock0) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(d.cnblocks) * blockDim.x;
  const int64_t nvec = VEC ? d.P / 4 : 0;
  for (int64_t v = t0; v < nvec; v += stride) {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    int j = 0;
    for (; j + 8 <= T; j += 8) {  // 8 independent 16-byte loads in flight per thread
      double x[8][4];
#pragma unroll
      for (int k = 0; k < 8; ++k) load4(g + static_cast<int64_t>(j + k) * d.ld + 4 * v, x[k]);
#pragma unroll
      for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[e] = fma(w[j + k], x[k][e], s[e]);
    }
    for (; j < T; ++j) {
      double x[4];
      load4(g + static_cast<int64_t>(j) * d.ld + 4 * v, x);
#pragma unroll
      for (int e = 0; e < 4; ++e) s[e] = fma(w[j], x[e], s[e]);
    }
    store4(out + 4 * v, s);
  }
  for (int64_t c = 4 * nvec + t0; c < d.P; c += stride) {
    double s = 0.0;
    for (int j = 0; j < T; ++j) s = fma(w[j], static_cast<double>(g[static_cast<int64_t>(j) * d.ld + c]), s);
    out[c] = static_cast<S>(s);
  }
}

// ---- launch -------------------------------------------------------------------------------

template <typename S, int NB, bool DIAG>
void launch_gram(bool vec, dim3 grid, cudaStream_t st, const BlockDesc* descs, const int32_t* gmap,
                 int T, int nsuper, int64_t npairs, double* partial) {
  if (vec)
    gram_kernel<S, NB, DIAG, true><<<grid, kGramWarps * 32, 0, st>>>(descs, gmap, T, nsuper, npairs, partial);
  else
    gram_kernel<S, NB, DIAG, false><<<grid, kGramWarps * 32, 0, st>>>(descs, gmap, T, nsuper, npairs, partial);
}

// Resident Gram blocks per SM for this (dtype, T), from the compiler's register count.
template <typename S>
int occupancy(int64_t T) {
  int n = 0;
  const int NB = T <= 32 ? static_cast<int>((T + 7) / 8) : 4;
  const void* f = NB == 1   ? reinterpret_cast<const void*>(gram_kernel<S, 1, true, true>)
                  : NB == 2 ? reinterpret_cast<const void*>(gram_kernel<S, 2, true, true>)
                  : NB == 3 ? reinterpret_cast<const void*>(gram_kernel<S, 3, true, true>)
                            : reinterpret_cast<const void*>(gram_kernel<S, 4, true, true>);
  PYZSL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, f, kGramWarps * 32, 0));
  return std::max(1, n);
}

int gram_blocks_per_sm(DType dtype, int64_t T, int device) {
  // cached per (device, dtype, NB): the occupancy query is not free
  static int cache[64][2][5] = {};
  const int NB = T <= 32 ? static_cast<int>((T + 7) / 8) : 4, f64 = dtype == DType::Float64;
  if (device >= 0 && device < 64 && cache[device][f64][NB] > 0) return cache[device][f64][NB];
  const int n = f64 ? occupancy<double>(T) : occupancy<float>(T);
  if (device >= 0 && device < 64) cache[device][f64][NB] = n;
  return n;
}

template <typename S>
void launch_all(const Plan& p, bool vec_gram, bool vec_out, cudaStream_t st, const BlockDesc* descs,
                const int32_t* gmap, const int32_t* cmap, double* partial, double* coef,
                const PCGradArgs& a) {
  const int T = static_cast<int>(p.T), nsuper = static_cast<int>(p.nsuper);
  if (T <= 32) {
    const dim3 grid(static_cast<unsigned>(p.gblocks), 1);
    const int NB = (T + 7) / 8;
    if (NB == 1) launch_gram<S, 1, true>(vec_gram, grid, st, descs, gmap, T, nsuper, p.npairs, partial);
    else if (NB == 2) launch_gram<S, 2, true>(vec_gram, grid, st, descs, gmap, T, nsuper, p.npairs, partial);
    else if (NB == 3) launch_gram<S, 3, true>(vec_gram, grid, st, descs, gmap, T, nsuper, p.npairs, partial);
    else launch_gram<S, 4, true>(vec_gram, grid, st, descs, gmap, T, nsuper, p.npairs, partial);
  } else {
    launch_gram<S, 4, true>(vec_gram, dim3(static_cast<unsigned>(p.gblocks), static_cast<unsigned>(nsuper)),
                            st, descs, gmap, T, nsuper, p.npairs, partial);
    launch_gram<S, 4, false>(vec_gram,
                             dim3(static_cast<unsigned>(p.gblocks), static_cast<unsigned>(nsuper * (nsuper - 1) / 2)),
                             st, descs, gmap, T, nsuper, p.npairs, partial);
  }
  PYZSL_CUDA_CHECK(cudaGetLastError());

  const size_t smem = p.solve_in_smem ? static_cast<size_t>(2 * p.T * p.T) * sizeof(double) : 0;
  solve_kernel<<<static_cast<unsigned>(p.L), kSolveThreads, smem, st>>>(
      descs, T, p.npairs, partial, a.order.given ? a.order.ptr<const int64_t>() : nullptr, a.mean,
      a.gram.ptr<double>(), a.order.given ? a.weights.ptr<double>() : nullptr,
      a.cosine.given ? a.cosine.ptr<double>() : nullptr,
      a.conflicts.given ? a.conflicts.ptr<int64_t>() : nullptr, a.status.ptr<int32_t>(), coef,
      p.solve_in_smem);
  PYZSL_CUDA_CHECK(cudaGetLastError());

  if (!a.out.empty()) {
    const size_t wbytes = static_cast<size_t>(T) * sizeof(double);
    PYZSL_CHECK(wbytes <= 48 * 1024, "G: T = ", T, " tasks is too many for the CUDA combine kernel");
    if (vec_out)
      combine_kernel<S, true><<<static_cast<unsigned>(p.cblocks), kCombineThreads, wbytes, st>>>(
          descs, cmap, T, a.weights.ptr<const double>());
    else
      combine_kernel<S, false><<<static_cast<unsigned>(p.cblocks), kCombineThreads, wbytes, st>>>(
          descs, cmap, T, a.weights.ptr<const double>());
    PYZSL_CUDA_CHECK(cudaGetLastError());
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

int64_t pcgrad_cuda_workspace_bytes(int64_t T, const std::vector<int64_t>& P, DType dtype, int device_index) {
  DeviceGuard guard(device_index);
  return static_cast<int64_t>(make_plan(T, P, dtype, device_index).bytes);
}

void pcgrad_cuda(const PCGradArgs& a, uintptr_t stream) {
  const Array& g0 = a.blocks[0];
  const int64_t T = g0.size(0), L = static_cast<int64_t>(a.blocks.size());
  // the device: an empty block (P_l = 0) has no data pointer to tell it, so the first that does
  int device = -1;
  for (const Array& g : a.blocks)
    if (device < 0) device = g.device_index;
  PYZSL_CHECK(a.workspace.given && a.workspace.device == Device::CUDA && a.workspace.contiguous() &&
                  (device < 0 || a.workspace.device_index == device),
              "workspace: expected a contiguous CUDA buffer on the device of G");
  if (device < 0) device = a.workspace.device_index;
  DeviceGuard guard(device);
  std::vector<int64_t> P(L);
  for (int64_t l = 0; l < L; ++l) P[l] = a.blocks[l].size(1);
  Plan p = make_plan(T, P, g0.dtype, device);
  const int64_t item = a.workspace.dtype == DType::Float32 || a.workspace.dtype == DType::Int32 ? 4
                       : a.workspace.dtype == DType::Bool                                       ? 1
                                                                                                : 8;
  PYZSL_CHECK(a.workspace.numel() * item >= static_cast<int64_t>(p.bytes), "workspace: ",
              a.workspace.numel() * item, " bytes, needs ", p.bytes, " (pcgrad_workspace_bytes)");
  PYZSL_CHECK(aligned16(a.workspace.data), "workspace: must be 16-byte aligned");

  // 16-byte vector paths need aligned rows (and outputs); anything else takes the scalar path.
  const int64_t per16 = 16 / (g0.dtype == DType::Float32 ? 4 : 8);
  bool vec_gram = true, vec_out = true;
  for (int64_t l = 0; l < L; ++l) {
    const Array& g = a.blocks[l];
    BlockDesc& d = p.descs[l];
    d.g = g.data;
    d.ld = g.size(0) > 1 ? g.strides[0] : g.size(1);
    d.out = a.out.empty() ? nullptr : a.out[l].data;
    const bool ok = aligned16(g.data) && (g.size(0) <= 1 || d.ld % per16 == 0);
    vec_gram &= ok;
    vec_out &= ok && (d.out == nullptr || aligned16(d.out));
  }

  // Descriptors and block maps: one small host-to-device copy from pageable memory, on the
  // caller's stream before the kernels that read them. The runtime stages pageable memory and
  // may make the host wait for the stream here (a pinned buffer would avoid it).
  const cudaStream_t st = as_stream(stream);
  char* ws = static_cast<char*>(a.workspace.data);
  std::vector<char> host(p.upload_bytes, 0);
  std::memcpy(host.data(), p.descs.data(), p.descs.size() * sizeof(BlockDesc));
  std::memcpy(host.data() + p.off_gmap, p.gmap.data(), p.gmap.size() * sizeof(int32_t));
  std::memcpy(host.data() + p.off_cmap, p.cmap.data(), p.cmap.size() * sizeof(int32_t));
  PYZSL_CUDA_CHECK(cudaMemcpyAsync(ws, host.data(), p.upload_bytes, cudaMemcpyHostToDevice, st));
  PYZSL_CUDA_CHECK(cudaMemsetAsync(a.status.data, 0, sizeof(int32_t), st));

  const auto* descs = reinterpret_cast<const BlockDesc*>(ws);
  const auto* gmap = reinterpret_cast<const int32_t*>(ws + p.off_gmap);
  const auto* cmap = reinterpret_cast<const int32_t*>(ws + p.off_cmap);
  auto* partial = reinterpret_cast<double*>(ws + p.off_partial);
  auto* coef = reinterpret_cast<double*>(ws + p.off_coef);
  if (g0.dtype == DType::Float32)
    launch_all<float>(p, vec_gram, vec_out, st, descs, gmap, cmap, partial, coef, a);
  else
    launch_all<double>(p, vec_gram, vec_out, st, descs, gmap, cmap, partial, coef, a);
}

}  // namespace pyzsl
