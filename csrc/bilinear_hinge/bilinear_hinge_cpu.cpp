#include "bilinear_hinge/bilinear_hinge.h"

#include <cmath>

#include "common/parallel.h"

namespace pyzsl {

namespace {

void validate(const HingeTileArgs& a) {
  require_float(a.scores);
  require_shape(a.scores, {-1, -1});
  require_contiguous(a.scores);
  const int64_t B = a.scores.size(0), n = a.scores.size(1);
  for (const Array* x : {&a.positive, &a.labels, &a.loss, &a.count, &a.best_value, &a.best_index}) {
    require_shape(*x, {B});
    require_contiguous(*x);
    require_same_device(*x, a.scores);
  }
  require_same_dtype(a.positive, a.scores);
  require_dtype(a.labels, DType::Int64);
  require_dtype(a.loss, DType::Float64);
  require_dtype(a.count, DType::Float64);
  require_dtype(a.best_value, DType::Float64);
  require_dtype(a.best_index, DType::Int64);
  require_dtype(a.status, DType::Int32);
  require_shape(a.status, {1});
  require_same_device(a.status, a.scores);
  PYZSL_CHECK(a.col0 >= 0 && a.col0 + n <= a.num_classes, "tile columns [", a.col0, ", ",
              a.col0 + n, ") outside [0, ", a.num_classes, ")");
  if (a.class_mask.given) {
    require_dtype(a.class_mask, DType::Bool);
    require_shape(a.class_mask, {a.num_classes});
    require_contiguous(a.class_mask);
    require_same_device(a.class_mask, a.scores);
  }
  PYZSL_CHECK(!(a.hardest && a.write_grad), "write_grad is for negatives='sum' only");
}

// Sum mode, one row: loss and count of violators, dL/ds written in place when asked.
// Branch-free so that it vectorises; the true class's column is taken out afterwards.
template <typename T, bool kMask, bool kGrad>
void sum_row(T* row, int64_t n, T base, const bool* mask, double& loss, double& count,
             int& nonfinite) {
  constexpr int64_t kBlock = 1024;  // partial sums in T, totals in double
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t j1 = j0 + kBlock < n ? j0 + kBlock : n;
    T l = 0, c = 0, chk = 0;
#pragma omp simd reduction(+ : l, c, chk)
    for (int64_t j = j0; j < j1; ++j) {
      const T s = row[j];
      chk += s - s;  // NaN iff s is NaN or inf
      const T h = base + s;
      const bool active = h > T(0) && (!kMask || mask[j]);
      l += active ? h : T(0);
      c += active ? T(1) : T(0);
      if (kGrad) row[j] = active ? T(1) : T(0);
    }
    loss += l;
    count += c;
    if (chk != chk) nonfinite = 1;
  }
}

template <typename T>
int64_t run(const HingeTileArgs& a) {
  const int64_t B = a.scores.size(0), n = a.scores.size(1);
  T* S = a.scores.ptr<T>();
  const T* pos = a.positive.ptr<T>();
  const int64_t* y = a.labels.ptr<int64_t>();
  const bool* mask = a.class_mask.given ? a.class_mask.ptr<bool>() + a.col0 : nullptr;
  double* loss = a.loss.ptr<double>();
  double* count = a.count.ptr<double>();
  double* best = a.best_value.ptr<double>();
  int64_t* best_idx = a.best_index.ptr<int64_t>();
  int nonfinite = 0;
  int64_t violators = 0;
  const T margin = static_cast<T>(a.margin);

#pragma omp parallel for schedule(static) reduction(+ : violators) reduction(| : nonfinite) \
    if (B * n >= kParallelMinElems)
  for (int64_t b = 0; b < B; ++b) {
    T* row = S + b * n;
    const T base = margin - pos[b];
    const int64_t own = y[b] - a.col0;  // the true class's column in this tile, if any
    const bool has_own = own >= 0 && own < n;
    if (!std::isfinite(base)) nonfinite = 1;
    double l = 0, c = 0;
    if (a.hardest) {
      double bv = best[b];
      int64_t bi = best_idx[b];
      for (int64_t j = 0; j < n; ++j) {
        const T s = row[j];
        if (!std::isfinite(s)) nonfinite = 1;
        const T h = base + s;
        if (h > 0 && j != own && (mask == nullptr || mask[j]) && h > bv) {
          bv = h;  // strict: ties keep the smaller class index
          bi = a.col0 + j;
        }
      }
      best[b] = bv;
      best_idx[b] = bi;
      continue;
    }
    const T own_h = has_own ? base + row[own] : T(0);
    if (mask && a.write_grad) sum_row<T, true, true>(row, n, base, mask, l, c, nonfinite);
    else if (mask) sum_row<T, true, false>(row, n, base, mask, l, c, nonfinite);
    else if (a.write_grad) sum_row<T, false, true>(row, n, base, mask, l, c, nonfinite);
    else sum_row<T, false, false>(row, n, base, mask, l, c, nonfinite);
    if (has_own && own_h > 0 && (mask == nullptr || mask[own])) {  // the positive is no negative
      l -= own_h;
      c -= 1;
    }
    if (has_own && a.write_grad) row[own] = 0;
    loss[b] += l;
    count[b] += c;
    violators += static_cast<int64_t>(c);
  }
  if (nonfinite) a.status.ptr<int32_t>()[0] = 1;
  return violators;
}

}  // namespace

int64_t hinge_tile_cpu(const HingeTileArgs& a) {
  return a.scores.dtype == DType::Float32 ? run<float>(a) : run<double>(a);
}

int64_t hinge_tile(const HingeTileArgs& a, uintptr_t stream) {
  validate(a);
  if (a.scores.device == Device::CUDA) {
#ifdef WITH_CUDA
    PYZSL_CHECK(a.scores.dtype == DType::Float32, "scores: CUDA kernels take float32, got ",
                dtype_name(a.scores.dtype));
    hinge_tile_cuda(a, stream);
    return -1;
#else
    (void)stream;
    fail("pyzsl was built without CUDA support (build_info()['cuda'] is False): "
         "rebuild with a CUDA toolkit, or pass CPU tensors");
#endif
  }
  return hinge_tile_cpu(a);
}

}  // namespace pyzsl
