// CUDA hinge tile: one warp per row of the score tile, coalesced over classes.
#include "bilinear_hinge/bilinear_hinge.h"
#include "common/cuda.h"

namespace pyzsl {

namespace {

constexpr int kWarpsPerBlock = 8;

__global__ void hinge_tile_kernel(float* __restrict__ S, const float* __restrict__ pos,
                                  const int64_t* __restrict__ y, const bool* __restrict__ mask,
                                  double* __restrict__ loss, double* __restrict__ count,
                                  double* __restrict__ best, int64_t* __restrict__ best_idx,
                                  int32_t* __restrict__ status, int64_t B, int64_t n, int64_t col0,
                                  float margin, bool write_grad) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= B) return;
  float* row = S + b * n;
  const float base = margin - pos[b];
  const int64_t own = y[b] - col0;
  bool nonfinite = !isfinite(base);
  double l = 0, c = 0;
  double bv = 0;          // this lane's hardest violator in the tile
  int64_t bi = -1;
  for (int64_t j = lane; j < n; j += 32) {
    const float s = row[j];
    nonfinite |= !isfinite(s);
    const float h = base + s;
    const bool active = h > 0.f && j != own && (mask == nullptr || mask[col0 + j]);
    if (active) {
      l += h;
      c += 1;
      if (h > bv) {
        bv = h;
        bi = col0 + j;
      }
    }
    if (write_grad) row[j] = active ? 1.f : 0.f;
  }
  for (int off = 16; off > 0; off >>= 1) {
    l += __shfl_down_sync(0xffffffffu, l, off);
    c += __shfl_down_sync(0xffffffffu, c, off);
    const double ov = __shfl_down_sync(0xffffffffu, bv, off);
    const long long oi = __shfl_down_sync(0xffffffffu, static_cast<long long>(bi), off);
    // larger value wins; on a tie the smaller class index (a real index beats -1 only by value)
    if (ov > bv || (ov == bv && oi >= 0 && (bi < 0 || oi < bi))) {
      bv = ov;
      bi = oi;
    }
  }
  nonfinite = __any_sync(0xffffffffu, nonfinite);
  if (lane == 0) {
    loss[b] += l;
    count[b] += c;
    // tiles arrive in increasing column order: an equal value from this tile has a larger index
    if (bv > best[b]) {
      best[b] = bv;
      best_idx[b] = bi;
    }
    if (nonfinite) status[0] = 1;
  }
}

}  // namespace

void hinge_tile_cuda(const HingeTileArgs& a, uintptr_t stream) {
  const int64_t B = a.scores.size(0), n = a.scores.size(1);
  if (B == 0 || n == 0) return;
  DeviceGuard guard(a.scores.device_index);
  const unsigned blocks = static_cast<unsigned>((B + kWarpsPerBlock - 1) / kWarpsPerBlock);
  hinge_tile_kernel<<<blocks, kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
      a.scores.ptr<float>(), a.positive.ptr<float>(), a.labels.ptr<int64_t>(),
      a.class_mask.given ? a.class_mask.ptr<bool>() : nullptr, a.loss.ptr<double>(),
      a.count.ptr<double>(), a.best_value.ptr<double>(), a.best_index.ptr<int64_t>(),
      a.status.ptr<int32_t>(), B, n, a.col0, static_cast<float>(a.margin), a.write_grad);
  PYZSL_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pyzsl
