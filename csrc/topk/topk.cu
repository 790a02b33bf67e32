// CUDA top-k tile: one warp per row. Each lane keeps its own sorted candidates among the
// columns it reads (lane, lane+32, ...), filtered against the row's running k-th best; the
// warp then merges the 32 lane lists with the running list, k rounds of a shuffle argmax.
#include <cfloat>
#include <climits>

#include "common/cuda.h"
#include "topk/topk.h"

namespace pyzsl {

namespace {

constexpr int kWarpsPerBlock = 4;

template <int KMAX>
__global__ void topk_tile_kernel(const float* __restrict__ S, const float* __restrict__ bias,
                                 const bool* __restrict__ mask, float* __restrict__ vals,
                                 int64_t* __restrict__ idx, int32_t* __restrict__ status,
                                 int64_t B, int64_t n, int k, int64_t col0) {
  __shared__ float out_v[kWarpsPerBlock][KMAX];
  __shared__ int64_t out_i[kWarpsPerBlock][KMAX];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (b >= B) return;  // whole warps exit together: b is warp-uniform
  const float* row = S + b * n;
  float* rv = vals + b * k;
  int64_t* ri = idx + b * k;

  float lv[KMAX];
  int64_t li[KMAX];
  int cnt = 0;
  float thr = rv[k - 1];
  bool nonfinite = false;
  for (int64_t j = lane; j < n; j += 32) {
    const float raw = row[j];
    const float s = bias ? raw + bias[col0 + j] : raw;
    // a NaN or ±inf score, or a NaN or +inf bias, is an error wherever it is, masked or not
    // (as on the CPU); a finite score + bias that overflows only where it could be picked:
    // unmasked, above thr
    if (!(s > thr) || (mask && !mask[col0 + j])) {
      nonfinite |= isnan(s) || isinf(raw) || (bias && bias[col0 + j] == INFINITY);
      continue;
    }
    if (!isfinite(s)) {
      nonfinite = true;
      continue;
    }
    int p = cnt < k ? cnt++ : k - 1;
    while (p > 0 && lv[p - 1] < s) {
      lv[p] = lv[p - 1];
      li[p] = li[p - 1];
      --p;
    }
    lv[p] = s;
    li[p] = col0 + j;
    if (cnt == k) thr = lv[k - 1];
  }
  if (__any_sync(0xffffffffu, nonfinite) && lane == 0) status[0] = 1;
  if (!__any_sync(0xffffffffu, cnt > 0)) return;  // nothing in this tile beats the row's k-th

  int head = 0, old = 0;
  for (int r = 0; r < k; ++r) {
    float bv = head < cnt ? lv[head] : -INFINITY;
    long long bi = head < cnt ? li[head] : LLONG_MAX;
    int bl = lane;
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
      const long long oi = __shfl_xor_sync(0xffffffffu, bi, off);
      const int ol = __shfl_xor_sync(0xffffffffu, bl, off);
      if (ov > bv || (ov == bv && oi < bi)) {
        bv = ov;
        bi = oi;
        bl = ol;
      }
    }
    // the running list's columns all precede this tile's: on a tie it goes first
    const float ov = rv[old];
    if (ov >= bv) {
      if (lane == 0) {
        out_v[warp][r] = ov;
        out_i[warp][r] = ri[old];
      }
      ++old;
    } else {
      if (lane == 0) {
        out_v[warp][r] = bv;
        out_i[warp][r] = bi;
      }
      if (lane == bl) ++head;
    }
  }
  __syncwarp();
  for (int r = lane; r < k; r += 32) {
    rv[r] = out_v[warp][r];
    ri[r] = out_i[warp][r];
  }
}

template <int KMAX>
void launch(const TopkTileArgs& a, uintptr_t stream) {
  const int64_t B = a.scores.size(0), n = a.scores.size(1);
  const int k = static_cast<int>(a.values.size(1));
  const unsigned blocks = static_cast<unsigned>((B + kWarpsPerBlock - 1) / kWarpsPerBlock);
  topk_tile_kernel<KMAX><<<blocks, kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
      a.scores.ptr<float>(), a.class_bias.given ? a.class_bias.ptr<float>() : nullptr,
      a.class_mask.given ? a.class_mask.ptr<bool>() : nullptr, a.values.ptr<float>(),
      a.indices.ptr<int64_t>(), a.status.ptr<int32_t>(), B, n, k, a.col0);
  PYZSL_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void topk_tile_cuda(const TopkTileArgs& a, uintptr_t stream) {
  const int64_t B = a.scores.size(0), n = a.scores.size(1), k = a.values.size(1);
  if (B == 0 || n == 0) return;
  DeviceGuard guard(a.scores.device_index);
  if (k <= 16)
    launch<16>(a, stream);
  else if (k <= 64)
    launch<64>(a, stream);
  else if (k <= 256)
    launch<256>(a, stream);
  else
    fail("values: the CUDA top-k takes k <= 256, got k=", k, " (use backend='torch' for larger k)");
}

}  // namespace pyzsl
