// CPU (OpenMP) Gram + PCGrad, and the argument validation shared with the CUDA path.
//
// Both passes stream G once, in chunks of columns:
//   Gram:    4×4 register tiles of the upper triangle accumulate products in float64 vectors
//            (the product of two float32 is exact in float64), over chunks of columns that
//            stay in L2 while the tiles re-read them; the next chunk is prefetched meanwhile.
//            Fixed column groups are taken dynamically by the threads and their partial
//            Grams summed in group order: the result does not depend on the thread count.
//   combine: out = Σ_j w_j g_j, rows in groups of 8, accumulated in float64.
// Vector code is written once with GCC/Clang vector extensions and compiled for AVX-512,
// AVX2+FMA and the baseline (SSE2/NEON), picked at run time from the CPU's features.
#include "pcgrad/pcgrad.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "common/parallel.h"

#if defined(__GNUC__) || defined(__clang__)
#define PCG_INLINE __attribute__((always_inline)) inline
#else
#define PCG_INLINE inline
#endif

// The vector helpers below pass AVX vectors by value; they are always inlined into a function
// compiled for that ISA, so the ABI note GCC emits for them (-Wpsabi) concerns no real call.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define PCG_X86 1
#define PCG_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma")))
#define PCG_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace pyzsl {

namespace {

// ---- argument validation --------------------------------------------------------------

void validate(const PCGradArgs& a) {
  PYZSL_CHECK(!a.blocks.empty(), "G: expected at least one gradient block");
  const Array& g0 = a.blocks[0];
  const int64_t L = static_cast<int64_t>(a.blocks.size());
  for (const Array& g : a.blocks) {
    require_float(g);
    require_shape(g, {-1, -1});
    require_same_device(g, g0);
    require_same_dtype(g, g0);
    PYZSL_CHECK(g.size(0) == g0.size(0), g.name, ": has ", g.size(0), " task rows but ", g0.name,
                " has ", g0.size(0), " (every block needs the same T)");
    PYZSL_CHECK(g.size(1) <= 1 || g.strides[1] == 1, g.name,
                ": columns must be contiguous (unit stride); pass .contiguous()");
    PYZSL_CHECK(g.size(0) <= 1 || g.strides[0] >= g.size(1), g.name, ": row stride ", g.strides[0],
                " is smaller than the row length ", g.size(1));
  }
  const int64_t T = g0.size(0);
  PYZSL_CHECK(T >= 1, "G: needs at least one task gradient (T >= 1)");
  auto f64 = [&](const Array& x, std::initializer_list<int64_t> shape) {
    require_dtype(x, DType::Float64);
    require_shape(x, shape);
    require_contiguous(x);
    require_same_device(x, g0);
  };
  f64(a.gram, {L, T, T});
  if (a.order.given) {
    require_dtype(a.order, DType::Int64);
    require_shape(a.order, {T, T});
    require_contiguous(a.order);
    require_same_device(a.order, g0);
    f64(a.weights, {L, T});
  }
  if (!a.out.empty()) {
    PYZSL_CHECK(a.order.given, "out: the update needs an order");
    PYZSL_CHECK(static_cast<int64_t>(a.out.size()) == L, "out: expected ", L, " outputs, got ",
                a.out.size());
    for (int64_t l = 0; l < L; ++l) {
      const Array& o = a.out[l];
      require_same_dtype(o, g0);
      require_shape(o, {a.blocks[l].size(1)});
      require_contiguous(o);
      require_same_device(o, g0);
    }
  }
  if (a.cosine.given) f64(a.cosine, {L, T, T});
  if (a.conflicts.given) {
    require_dtype(a.conflicts, DType::Int64);
    require_shape(a.conflicts, {L});
    require_contiguous(a.conflicts);
    require_same_device(a.conflicts, g0);
  }
  require_dtype(a.status, DType::Int32);
  require_shape(a.status, {1});
  require_same_device(a.status, g0);
}

// Host-side check of the order (the CPU path): every row a permutation of 0..T-1.
void validate_order(const int64_t* order, int64_t T) {
  std::vector<char> seen(T);
  for (int64_t i = 0; i < T; ++i) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t k = order[i * T + s];
      PYZSL_CHECK(k >= 0 && k < T, "order: row ", i, " holds ", k, ", outside [0, ", T, ")");
      PYZSL_CHECK(!seen[k], "order: row ", i, " is not a permutation of 0..", T - 1, " (", k,
                  " appears twice)");
      seen[k] = 1;
    }
  }
}

// ---- ISA selection ----------------------------------------------------------------------

enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2 };

Isa best_isa() {
#ifdef PCG_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Generic;
}

// The CPU's best, lowered by PYZSL_PCGRAD_ISA (generic|avx2|avx512) for tests and comparisons.
Isa pick_isa() {
  static const Isa best = best_isa();
  Isa want = best;
  if (const char* env = std::getenv("PYZSL_PCGRAD_ISA")) {
    const std::string s(env);
    if (s == "generic") want = Isa::Generic;
    else if (s == "avx2") want = Isa::Avx2;
    else if (s == "avx512") want = Isa::Avx512;
    else if (!s.empty() && s != "auto")
      fail("PYZSL_PCGRAD_ISA: expected auto, generic, avx2 or avx512, got '", s, "'");
  }
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

// ---- vector kernels -------------------------------------------------------------------
// W float64 lanes per vector: 8 (AVX-512), 4 (AVX2), 2 (SSE2/NEON).

template <int W>
struct Vec {
  typedef double type __attribute__((vector_size(8 * W)));
};

template <int W>
PCG_INLINE typename Vec<W>::type vload(const double* p) {
  typename Vec<W>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int W>
PCG_INLINE void vstore(double* p, const typename Vec<W>::type& v) {
  std::memcpy(p, &v, sizeof v);
}

// W elements of S as float64 (an element loop: GCC emits one vcvtps2pd mem→zmm for it).
template <int W, class S>
PCG_INLINE typename Vec<W>::type vload_s(const S* p) {
  typename Vec<W>::type x;
  for (int k = 0; k < W; ++k) x[k] = static_cast<double>(p[k]);
  return x;
}

template <int W>
PCG_INLINE double hsum(const typename Vec<W>::type& v) {
  double s = 0;
  for (int k = 0; k < W; ++k) s += v[k];
  return s;
}

// Off-diagonal 4×4 tile: acc[4r+c] += Σ_p a_r[p] b_c[p] over n columns (n a multiple of W).
// float32 rows are converted again here (from L2) rather than kept as a float64 copy: the
// conversions issue beside the FMAs, a copy's stores and loads do not (T = 8: 1.9 vs 3.5 ns
// per column).
template <int W, class R>
PCG_INLINE void tile_off(const R* a0, const R* a1, const R* a2, const R* a3,
                         const R* b0, const R* b1, const R* b2, const R* b3,
                         int64_t n, double* acc) {
  typedef typename Vec<W>::type vd;
#define PCG_A(e) vload<W>(acc + (e) * W)
  vd s00 = PCG_A(0), s01 = PCG_A(1), s02 = PCG_A(2), s03 = PCG_A(3);
  vd s10 = PCG_A(4), s11 = PCG_A(5), s12 = PCG_A(6), s13 = PCG_A(7);
  vd s20 = PCG_A(8), s21 = PCG_A(9), s22 = PCG_A(10), s23 = PCG_A(11);
  vd s30 = PCG_A(12), s31 = PCG_A(13), s32 = PCG_A(14), s33 = PCG_A(15);
  for (int64_t p = 0; p < n; p += W) {
    const vd y0 = vload_s<W>(b0 + p), y1 = vload_s<W>(b1 + p), y2 = vload_s<W>(b2 + p), y3 = vload_s<W>(b3 + p);
    vd x = vload_s<W>(a0 + p);
    s00 += x * y0; s01 += x * y1; s02 += x * y2; s03 += x * y3;
    x = vload_s<W>(a1 + p);
    s10 += x * y0; s11 += x * y1; s12 += x * y2; s13 += x * y3;
    x = vload_s<W>(a2 + p);
    s20 += x * y0; s21 += x * y1; s22 += x * y2; s23 += x * y3;
    x = vload_s<W>(a3 + p);
    s30 += x * y0; s31 += x * y1; s32 += x * y2; s33 += x * y3;
  }
#define PCG_S(e, v) vstore<W>(acc + (e) * W, v)
  PCG_S(0, s00); PCG_S(1, s01); PCG_S(2, s02); PCG_S(3, s03);
  PCG_S(4, s10); PCG_S(5, s11); PCG_S(6, s12); PCG_S(7, s13);
  PCG_S(8, s20); PCG_S(9, s21); PCG_S(10, s22); PCG_S(11, s23);
  PCG_S(12, s30); PCG_S(13, s31); PCG_S(14, s32); PCG_S(15, s33);
}

// Diagonal 4×4 tile: only the 10 pairs r ≤ c (acc[4r+c]). The diagonal tiles meet every row
// once per chunk, so they also prefetch these rows of the next chunk (f0..f3, up to nf
// columns), a few hints per iteration: DRAM works while the tiles compute.
template <int W, class S>
PCG_INLINE void tile_diag(const S* a0, const S* a1, const S* a2, const S* a3, int64_t n, double* acc,
                          const S* f0, const S* f1, const S* f2, const S* f3, int64_t nf) {
  typedef typename Vec<W>::type vd;
  constexpr int64_t E = 64 / sizeof(S);  // elements per cache line
  vd s00 = PCG_A(0), s01 = PCG_A(1), s02 = PCG_A(2), s03 = PCG_A(3);
  vd s11 = PCG_A(5), s12 = PCG_A(6), s13 = PCG_A(7);
  vd s22 = PCG_A(10), s23 = PCG_A(11);
  vd s33 = PCG_A(15);
  for (int64_t p = 0; p < n; p += W) {
    if (p % E == 0 && p < nf) {
      __builtin_prefetch(f0 + p, 0, 2);
      __builtin_prefetch(f1 + p, 0, 2);
      __builtin_prefetch(f2 + p, 0, 2);
      __builtin_prefetch(f3 + p, 0, 2);
    }
    const vd x0 = vload_s<W>(a0 + p), x1 = vload_s<W>(a1 + p), x2 = vload_s<W>(a2 + p),
             x3 = vload_s<W>(a3 + p);
    s00 += x0 * x0; s01 += x0 * x1; s02 += x0 * x2; s03 += x0 * x3;
    s11 += x1 * x1; s12 += x1 * x2; s13 += x1 * x3;
    s22 += x2 * x2; s23 += x2 * x3;
    s33 += x3 * x3;
  }
  PCG_S(0, s00); PCG_S(1, s01); PCG_S(2, s02); PCG_S(3, s03);
  PCG_S(5, s11); PCG_S(6, s12); PCG_S(7, s13);
  PCG_S(10, s22); PCG_S(11, s23);
  PCG_S(15, s33);
}
#undef PCG_A
#undef PCG_S

struct Item {      // a chunk of columns [c0, c1) of block `layer`
  int64_t layer, c0, c1;
};

struct Job {
  const PCGradArgs* args;
  int64_t T;
  std::vector<Item> items;
};

std::vector<Item> make_items(const PCGradArgs& a, int64_t chunk) {
  std::vector<Item> items;
  for (int64_t l = 0; l < static_cast<int64_t>(a.blocks.size()); ++l) {
    const int64_t P = a.blocks[l].size(1);
    for (int64_t c = 0; c < P; c += chunk) items.push_back({l, c, std::min(P, c + chunk)});
  }
  return items;
}

// Columns per Gram chunk: T (padded to 4) rows of 160 KB / (8·Tp) columns stay in L2 while
// the tiles re-read them; rows of 10 KB (T = 8, float32) keep the hardware prefetchers going.
int64_t gram_chunk(int64_t Tp) { return std::max<int64_t>(64, (160 * 1024 / 8 / Tp) / 16 * 16); }
constexpr int64_t kCombineChunk = 2048;  // columns; the float64 accumulator is 16 KB

// While a chunk is processed, the same rows of the next chunk are prefetched, one hint per
// 64-byte line spread over the loop (a burst of hints stalls on the miss buffers): DRAM stays
// busy while the tiles compute. Measured at T = 8, P = 1e7, one thread: Gram pass 45 -> 23 ms.
template <class S>
PCG_INLINE void prefetch_line(const S* p) {
  __builtin_prefetch(p, 0, 2);
}
constexpr int64_t kLine = 64;

// Gram of items [i0, i1) into part (one T×T upper triangle per block from layer0 on,
// accumulated). Per chunk: the diagonal tiles, then the off-diagonal ones (G's rows now in
// L2), then a scalar loop over the last < W columns of a block.
template <class S, int W>
PCG_INLINE void gram_items(const Job& job, int64_t i0, int64_t i1, double* part, int64_t layer0) {
  const PCGradArgs& a = *job.args;
  const int64_t T = job.T, Tp = (T + 3) / 4 * 4, nb = Tp / 4, CH = gram_chunk(Tp);
  const std::vector<S> zero(static_cast<size_t>(CH), S(0));  // the rows beyond T
  // per-lane float64 sums of each tile (bi, bj) at (bi·nb + bj)·16·W, kept across the chunks
  // of a gradient block; `tail` the scalar sums of the last columns
  std::vector<double> acc(static_cast<size_t>(nb * nb * 16 * W), 0.0), tail(static_cast<size_t>(T * T), 0.0);
  std::vector<const S*> src(Tp), nxt(Tp);
  int64_t layer = -1;
  auto flush = [&]() {
    if (layer < 0) return;
    double* K = part + (layer - layer0) * T * T;
    for (int64_t bi = 0; bi < nb; ++bi)
      for (int64_t bj = bi; bj < nb; ++bj)
        for (int e = 0; e < 16; ++e) {
          const int64_t i = 4 * bi + e / 4, j = 4 * bj + e % 4;
          double* v = acc.data() + ((bi * nb + bj) * 16 + e) * W;
          if (i < T && j < T && i <= j) K[i * T + j] += hsum<W>(vload<W>(v));
          std::fill(v, v + W, 0.0);
        }
    for (int64_t k = 0; k < T * T; ++k) K[k] += tail[k];
    std::fill(tail.begin(), tail.end(), 0.0);
  };
  for (int64_t it = i0; it < i1; ++it) {
    const Item& item = job.items[it];
    if (item.layer != layer) {
      flush();
      layer = item.layer;
    }
    const Array& g = a.blocks[layer];
    const Item* next = it + 1 < i1 ? &job.items[it + 1] : nullptr;
    const int64_t n = item.c1 - item.c0, nv = n / W * W, nf = next ? next->c1 - next->c0 : 0;
    for (int64_t r = 0; r < Tp; ++r) {
      src[r] = r < T ? g.ptr<const S>() + r * g.strides[0] + item.c0 : zero.data();
      nxt[r] = zero.data();
      if (next && r < T) {
        const Array& gn = a.blocks[next->layer];
        nxt[r] = gn.ptr<const S>() + r * gn.strides[0] + next->c0;
      }
    }
    for (int64_t bi = 0; bi < nb; ++bi) {
      const S* const* x = src.data() + 4 * bi;
      const S* const* f = nxt.data() + 4 * bi;
      tile_diag<W, S>(x[0], x[1], x[2], x[3], nv, acc.data() + (bi * nb + bi) * 16 * W, f[0], f[1], f[2],
                      f[3], nf);
    }
    for (int64_t bi = 0; bi < nb; ++bi)
      for (int64_t bj = bi + 1; bj < nb; ++bj) {
        const S* const* x = src.data() + 4 * bi;
        const S* const* y = src.data() + 4 * bj;
        tile_off<W, S>(x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3], nv, acc.data() + (bi * nb + bj) * 16 * W);
      }
    for (int64_t p = nv; p < n; ++p)  // the last < W columns
      for (int64_t i = 0; i < T; ++i) {
        const double xi = static_cast<double>(src[i][p]);
        for (int64_t j = i; j < T; ++j) tail[i * T + j] += xi * static_cast<double>(src[j][p]);
      }
  }
  flush();
}

// out[c0:c1] of one item: rows in groups of up to kGroup (one pass over the columns per
// group), float64 accumulator `acc` between groups (T > kGroup).
constexpr int kGroup = 8;
template <class S, int W>
PCG_INLINE void combine_item(const PCGradArgs& a, const Item& item, const Item* next, int64_t T,
                             const double* w, double* acc) {
  typedef typename Vec<W>::type vd;
  const Array& g = a.blocks[item.layer];
  S* out = a.out[item.layer].ptr<S>() + item.c0;
  const int64_t n = item.c1 - item.c0, nv = n / W * W, ld = g.strides[0];
  const S* base = g.ptr<const S>() + item.c0;
  const S* nbase = next ? a.blocks[next->layer].ptr<const S>() + next->c0 : nullptr;
  const int64_t nld = next ? a.blocks[next->layer].strides[0] : 0, nn = next ? next->c1 - next->c0 : 0;
  constexpr int64_t E = kLine / sizeof(S);
  for (int64_t r0 = 0; r0 < T; r0 += kGroup) {
    const int64_t R = std::min<int64_t>(kGroup, T - r0);
    const bool first = r0 == 0, last = r0 + kGroup >= T;
    // rows beyond T repeat the group's first row with weight 0: one loop shape for all R
    const S* x[kGroup];
    vd v[kGroup];
    double ws[kGroup];
    for (int k = 0; k < kGroup; ++k) {
      x[k] = k < R ? base + (r0 + k) * ld : base + r0 * ld;
      ws[k] = k < R ? w[r0 + k] : 0.0;
      v[k] = vd{} + ws[k];  // broadcast
    }
    for (int64_t p = 0; p < nv; p += W) {
      if (p % E == 0 && p < nn) {
        for (int64_t r = r0; r < r0 + R; ++r) prefetch_line(nbase + r * nld + p);
      }
      vd s = first ? vd{} : vload<W>(acc + p);
      for (int k = 0; k < kGroup; ++k) s += v[k] * vload_s<W>(x[k] + p);
      if (last) {
        for (int k = 0; k < W; ++k) out[p + k] = static_cast<S>(s[k]);
      } else {
        vstore<W>(acc + p, s);
      }
    }
    for (int64_t p = nv; p < n; ++p) {
      double s = first ? 0.0 : acc[p];
      for (int k = 0; k < kGroup; ++k) s += ws[k] * static_cast<double>(x[k][p]);
      if (last) out[p] = static_cast<S>(s);
      else acc[p] = s;
    }
  }
}

template <class S, int W>
PCG_INLINE void combine_items(const Job& job, int64_t i0, int64_t i1, const double* weights) {
  std::vector<double> acc(kCombineChunk);
  for (int64_t it = i0; it < i1; ++it) {
    const Item& item = job.items[it];
    combine_item<S, W>(*job.args, item, it + 1 < i1 ? &job.items[it + 1] : nullptr, job.T,
                       weights + item.layer * job.T, acc.data());
  }
}

// One instance per ISA: the always-inline templates above compile with the caller's target.
#define PCG_DEFINE_ISA(SUFFIX, ATTR, W)                                                         \
  ATTR void gram_items_##SUFFIX(const Job& j, int64_t i0, int64_t i1, double* part, int64_t l0,  \
                                bool f32) {                                                    \
    if (f32) gram_items<float, W>(j, i0, i1, part, l0);                                        \
    else gram_items<double, W>(j, i0, i1, part, l0);                                           \
  }                                                                                            \
  ATTR void combine_items_##SUFFIX(const Job& j, int64_t i0, int64_t i1, const double* w,      \
                                   bool f32) {                                                 \
    if (f32) combine_items<float, W>(j, i0, i1, w);                                            \
    else combine_items<double, W>(j, i0, i1, w);                                               \
  }

#ifdef PCG_X86
PCG_DEFINE_ISA(avx512, PCG_TARGET_AVX512, 8)
PCG_DEFINE_ISA(avx2, PCG_TARGET_AVX2, 4)
#endif
PCG_DEFINE_ISA(generic, , 2)

void run_gram_items(Isa isa, const Job& j, int64_t i0, int64_t i1, double* part, int64_t l0, bool f32) {
#ifdef PCG_X86
  if (isa == Isa::Avx512) return gram_items_avx512(j, i0, i1, part, l0, f32);
  if (isa == Isa::Avx2) return gram_items_avx2(j, i0, i1, part, l0, f32);
#endif
  (void)isa;
  gram_items_generic(j, i0, i1, part, l0, f32);
}

void run_combine_items(Isa isa, const Job& j, int64_t i0, int64_t i1, const double* w, bool f32) {
#ifdef PCG_X86
  if (isa == Isa::Avx512) return combine_items_avx512(j, i0, i1, w, f32);
  if (isa == Isa::Avx2) return combine_items_avx2(j, i0, i1, w, f32);
#endif
  (void)isa;
  combine_items_generic(j, i0, i1, w, f32);
}

// A fresh output buffer faults in on first write; with 4 KB pages the 10,000 faults of a
// 40 MB update cost more than the pass that writes it (measured: 28 ms of CPU time at
// P = 1e7 on a 2-core VM). Where transparent huge pages are in "madvise" mode, ask for
// them on the 2 MB-aligned interior of large outputs: purely a hint about the backing pages.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < static_cast<int64_t>(4 * kHuge)) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // a hint: errors ignored
#else
  (void)data;
  (void)bytes;
#endif
}

// ---- the T×T solve ----------------------------------------------------------------------

// PCGrad coefficients from the Gram K (T×T, symmetric): row i of c starts as e_i; for each
// k in order[i] (k ≠ i): d = (Σ_m c_im g_m)·g_k = Σ_m c_im K_mk; if d < 0 and |g_k|² > 0,
// c_ik -= d / K_kk. Returns w_j = Σ_i c_ij (÷T for the mean).
void solve(const double* K, const int64_t* order, int64_t T, bool mean, double* w,
           std::vector<double>& c) {
  c.assign(static_cast<size_t>(T * T), 0.0);
  for (int64_t i = 0; i < T; ++i) {
    double* ci = c.data() + i * T;
    ci[i] = 1.0;
    for (int64_t s = 0; s < T; ++s) {
      const int64_t k = order[i * T + s];
      const double kk = K[k * T + k];
      if (k == i || !(kk > 0)) continue;  // a zero gradient has nothing to project onto
      double d = 0;
      for (int64_t m = 0; m < T; ++m) d += ci[m] * K[m * T + k];
      if (d < 0) ci[k] -= d / kk;
    }
  }
  const double scale = mean ? 1.0 / static_cast<double>(T) : 1.0;
  for (int64_t j = 0; j < T; ++j) {
    double s = 0;
    for (int64_t i = 0; i < T; ++i) s += c[i * T + j];
    w[j] = s * scale;
  }
}

void diagnostics(const double* K, int64_t T, double* cosine, int64_t* conflicts) {
  int64_t n = 0;
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) {
      const double kij = K[i * T + j];
      if (i < j && kij < 0) ++n;
      if (cosine) {
        const double d = K[i * T + i] * K[j * T + j];
        cosine[i * T + j] = d > 0 ? std::min(1.0, std::max(-1.0, kij / std::sqrt(d))) : 0.0;
      }
    }
  if (conflicts) *conflicts = n;
}

}  // namespace

const char* pcgrad_cpu_isa() { return isa_name(pick_isa()); }

// The Gram pass runs over kGramGroups fixed ranges of column chunks, whatever the thread
// count, taken dynamically by the threads (a core busy with something else delays one group,
// not half the pass). Each group keeps its own partial Gram of every block it touches, and
// the partials are summed in group order: the Gram does not depend on the thread count.
constexpr int64_t kGramGroups = 64;
constexpr int64_t kCombineGrab = 8;  // combine chunks per dynamic grab
constexpr int64_t kSerialSolves = 8;  // up to this many blocks, one thread solves them all

struct Group {
  int64_t i0, i1;    // items
  int64_t layer0;    // first block it touches
  int64_t nlayers;   // blocks it touches
  int64_t off;       // its partials: parts[off·T² ...]
};

void pcgrad_cpu(const PCGradArgs& a) {
  const int64_t L = static_cast<int64_t>(a.blocks.size()), T = a.blocks[0].size(0), TT = T * T;
  const bool f32 = a.blocks[0].dtype == DType::Float32;
  const Isa isa = pick_isa();
  if (a.order.given) validate_order(a.order.ptr<const int64_t>(), T);

  for (const Array& o : a.out) advise_huge_pages(o.data, o.numel() * (f32 ? 4 : 8));
  Job gjob{&a, T, make_items(a, gram_chunk((T + 3) / 4 * 4))};
  Job cjob{&a, T, a.out.empty() ? std::vector<Item>{} : make_items(a, kCombineChunk)};
  const int64_t ni = static_cast<int64_t>(gjob.items.size()), ng = std::min(kGramGroups, ni);
  std::vector<Group> groups(ng);
  int64_t nparts = 0;
  for (int64_t g = 0; g < ng; ++g) {
    Group& G = groups[g];
    G.i0 = ni * g / ng;
    G.i1 = ni * (g + 1) / ng;
    G.layer0 = gjob.items[G.i0].layer;
    G.nlayers = gjob.items[G.i1 - 1].layer - G.layer0 + 1;
    G.off = nparts;
    nparts += G.nlayers;
  }
  std::vector<double> parts(static_cast<size_t>(nparts * TT), 0.0);
  const int64_t ncg = (static_cast<int64_t>(cjob.items.size()) + kCombineGrab - 1) / kCombineGrab;
  double* K = a.gram.ptr<double>();
  int32_t* status = a.status.ptr<int32_t>();
  std::vector<char> finite(static_cast<size_t>(L), 1);  // per block, as on CUDA
  auto solve_layer = [&](int64_t l) {
    thread_local std::vector<double> c;
    const double* Kl = K + l * TT;
    if (!finite[l]) {  // NaN weights, so the combine pass writes a NaN update for this block
      if (a.order.given)
        std::fill(a.weights.ptr<double>() + l * T, a.weights.ptr<double>() + (l + 1) * T,
                  std::numeric_limits<double>::quiet_NaN());
      return;
    }
    if (a.order.given) solve(Kl, a.order.ptr<const int64_t>(), T, a.mean, a.weights.ptr<double>() + l * T, c);
    diagnostics(Kl, T, a.cosine.given ? a.cosine.ptr<double>() + l * TT : nullptr,
                a.conflicts.given ? a.conflicts.ptr<int64_t>() + l : nullptr);
  };

  // One parallel region: Gram pass, barrier, reduction + solves, barrier, combine pass. Small
  // problems run on the calling thread: waking the team costs more than they do (and, on a
  // busy machine, can cost milliseconds).
  int64_t work = 0;
  for (const Array& g : a.blocks) work += g.numel();
  status[0] = 0;
#pragma omp parallel num_threads(std::max(1, max_threads())) if (work >= kParallelMinElems)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < ng; ++g)
      run_gram_items(isa, gjob, groups[g].i0, groups[g].i1, parts.data() + groups[g].off * TT,
                     groups[g].layer0, f32);
#pragma omp single
    {
      std::fill(K, K + L * TT, 0.0);
      for (const Group& G : groups)  // in group order: deterministic
        for (int64_t k = 0; k < G.nlayers; ++k) {
          const double* src = parts.data() + (G.off + k) * TT;
          double* Kl = K + (G.layer0 + k) * TT;
          for (int64_t i = 0; i < T; ++i)
            for (int64_t j = i; j < T; ++j) Kl[i * T + j] += src[i * T + j];
        }
      for (int64_t l = 0; l < L; ++l)
        for (int64_t i = 0; i < T; ++i)
          for (int64_t j = i; j < T; ++j) {
            double* Kl = K + l * TT;
            Kl[j * T + i] = Kl[i * T + j];
            if (!std::isfinite(Kl[i * T + j])) finite[l] = 0;
          }
      // a non-finite block: the caller raises (check=True) or gets NaN for that block only
      if (std::find(finite.begin(), finite.end(), 0) != finite.end()) status[0] |= 1;
      if (L <= kSerialSolves)
        for (int64_t l = 0; l < L; ++l) solve_layer(l);
    }  // implicit barrier
    if (L > kSerialSolves) {  // many blocks: their T×T solves in parallel (one more barrier)
#pragma omp for schedule(dynamic, 1)
      for (int64_t l = 0; l < L; ++l) solve_layer(l);
    }
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t g = 0; g < ncg; ++g)
      run_combine_items(isa, cjob, g * kCombineGrab,
                        std::min<int64_t>((g + 1) * kCombineGrab, static_cast<int64_t>(cjob.items.size())),
                        a.weights.ptr<double>(), f32);
  }
}

void pcgrad(const PCGradArgs& a, uintptr_t stream) {
  validate(a);
  if (a.blocks[0].device == Device::CUDA) {
#ifdef WITH_CUDA
    pcgrad_cuda(a, stream);
    return;
#else
    fail("pyzsl was built without CUDA support (build_info()['cuda'] is False): "
         "rebuild with a CUDA toolkit, or pass CPU tensors");
#endif
  }
  (void)stream;
  pcgrad_cpu(a);
}

int64_t pcgrad_workspace_bytes(int64_t T, const std::vector<int64_t>& P, DType dtype, int device_index) {
  PYZSL_CHECK(T >= 1, "G: needs at least one task gradient (T >= 1)");
  PYZSL_CHECK(dtype == DType::Float32 || dtype == DType::Float64, "G: expected float32 or float64");
  if (device_index < 0) return 0;  // CPU: no scratch
#ifdef WITH_CUDA
  return pcgrad_cuda_workspace_bytes(T, P, dtype, device_index);
#else
  (void)P;
  fail("pyzsl was built without CUDA support (build_info()['cuda'] is False)");
#endif
}

}  // namespace pyzsl
