#include "topk/topk.h"

#include <cmath>
#include <limits>

#include "common/parallel.h"

namespace pyzsl {

namespace {

void validate(const TopkTileArgs& a) {
  require_float(a.scores);
  require_shape(a.scores, {-1, -1});
  require_contiguous(a.scores);
  const int64_t B = a.scores.size(0), n = a.scores.size(1);
  require_shape(a.values, {B, -1});
  const int64_t k = a.values.size(1);
  require_shape(a.indices, {B, k});
  require_same_dtype(a.values, a.scores);
  require_dtype(a.indices, DType::Int64);
  require_dtype(a.status, DType::Int32);
  require_shape(a.status, {1});
  for (const Array* x : {&a.values, &a.indices, &a.status}) {
    require_contiguous(*x);
    require_same_device(*x, a.scores);
  }
  PYZSL_CHECK(k >= 1, "values: k must be at least 1");
  PYZSL_CHECK(a.threads >= 0, "threads: expected 0 (OpenMP's default) or more, got ", a.threads);
  PYZSL_CHECK(a.col0 >= 0 && a.col0 + n <= a.num_classes, "tile columns [", a.col0, ", ",
              a.col0 + n, ") outside [0, ", a.num_classes, ")");
  if (a.class_bias.given) {
    require_same_dtype(a.class_bias, a.scores);
    require_shape(a.class_bias, {a.num_classes});
    require_contiguous(a.class_bias);
    require_same_device(a.class_bias, a.scores);
  }
  if (a.class_mask.given) {
    require_dtype(a.class_mask, DType::Bool);
    require_shape(a.class_mask, {a.num_classes});
    require_contiguous(a.class_mask);
    require_same_device(a.class_mask, a.scores);
  }
}

// Columns per block of the sweep: a block whose vectorised maximum does not beat the k-th
// best is rejected whole; only the rare others are walked one column at a time.
constexpr int64_t kBlock = 64;

template <typename T>
inline void insert(T s, int64_t col, int64_t k, T* vals, int64_t* idx) {
  // insertion into the sorted list; equal values stay ahead (smaller index first)
  int64_t p = k - 1;
  while (p > 0 && vals[p - 1] < s) {
    vals[p] = vals[p - 1];
    idx[p] = idx[p - 1];
    --p;
  }
  vals[p] = s;
  idx[p] = col;
}

template <typename T, bool kBias>
void run(const TopkTileArgs& a) {
  const int64_t B = a.scores.size(0), n = a.scores.size(1), k = a.values.size(1);
  const T* S = a.scores.ptr<T>();
  const T* bias = kBias ? a.class_bias.ptr<T>() + a.col0 : nullptr;
  const bool* mask = a.class_mask.given ? a.class_mask.ptr<bool>() + a.col0 : nullptr;
  int nonfinite = 0;
  if (kBias) {
    // a NaN or +inf bias would win or poison every row; -inf is a valid "never"
    for (int64_t j = 0; j < n; ++j)
      if (std::isnan(bias[j]) || bias[j] == std::numeric_limits<T>::infinity()) nonfinite = 1;
  }

  const int threads = a.threads > 0 ? a.threads : max_threads();
#pragma omp parallel for schedule(static) reduction(| : nonfinite) num_threads(threads) \
    if (B * n >= kParallelMinElems && threads > 1)
  for (int64_t b = 0; b < B; ++b) {
    const T* row = S + b * n;
    T* vals = a.values.ptr<T>() + b * k;
    int64_t* idx = a.indices.ptr<int64_t>() + b * k;
    T thr = vals[k - 1];  // a column must beat the current k-th best strictly
    T chk = 0;            // NaN iff some score is NaN or inf
    for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
      const int64_t j1 = j0 + kBlock < n ? j0 + kBlock : n;
      T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx) reduction(+ : chk)
      for (int64_t j = j0; j < j1; ++j) {
        const T s = kBias ? row[j] + bias[j] : row[j];
        chk += row[j] - row[j];
        mx = s > mx ? s : mx;
      }
      if (!(mx > thr)) continue;
      for (int64_t j = j0; j < j1; ++j) {
        const T s = kBias ? row[j] + bias[j] : row[j];
        if (!(s > thr) || (mask && !mask[j])) continue;
        if (!std::isfinite(s)) {  // finite score + finite bias overflowed: an error, as on CUDA
          nonfinite = 1;
          continue;
        }
        insert(s, a.col0 + j, k, vals, idx);
        thr = vals[k - 1];
      }
    }
    if (chk != chk) nonfinite = 1;
  }
  if (nonfinite) a.status.ptr<int32_t>()[0] = 1;
}

}  // namespace

void topk_tile_cpu(const TopkTileArgs& a) {
  const bool f32 = a.scores.dtype == DType::Float32, biased = a.class_bias.given;
  if (f32)
    biased ? run<float, true>(a) : run<float, false>(a);
  else
    biased ? run<double, true>(a) : run<double, false>(a);
}

void topk_tile(const TopkTileArgs& a, uintptr_t stream) {
  validate(a);
  if (a.scores.device == Device::CUDA) {
#ifdef WITH_CUDA
    PYZSL_CHECK(a.scores.dtype == DType::Float32, "scores: CUDA kernels take float32, got ",
                dtype_name(a.scores.dtype));
    topk_tile_cuda(a, stream);
    return;
#else
    (void)stream;
    fail("pyzsl was built without CUDA support (build_info()['cuda'] is False): "
         "rebuild with a CUDA toolkit, or pass CPU tensors");
#endif
  }
  topk_tile_cpu(a);
}

}  // namespace pyzsl
