// A float32 linear layer for AVX2 CPUs over weights packed 16 outputs at a time, [N/16][K][16]: every pass streams
// the weights once, so a few-row pass (decode, verification) costs little more than a one-row pass, which is
// memory-bound; where BLAS costs about twice a one-row pass for 2..16 rows. Every output (row m, column n) is one
// float32 lane accumulating x[m][k] * w[n][k] over k in order, plus the bias: the same operations whatever the number
// of rows, so a row's result is bitwise the same in any batch (batch-invariant), prefill included.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

constexpr int64_t LANES = 16;  // outputs per packed block: two 8-float registers

// Weights are float32, or bfloat16 (the draft's): a bf16 value is the top half of the float32 with the same bits, so
// widening it is exact; the arithmetic is float32 either way.
inline void load16(const float* p, __m256& w0, __m256& w1) {
  w0 = _mm256_loadu_ps(p);
  w1 = _mm256_loadu_ps(p + 8);
}
inline __m256 widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
inline void load16(const uint16_t* p, __m256& w0, __m256& w1) {
  w0 = widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  w1 = widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
}
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// M rows x 16 outputs of one packed block (M <= 6: 2M accumulators + 2 weights + 1 broadcast <= 15 registers).
template <int M, typename W>
__attribute__((always_inline)) inline void tile16(const float* x, int64_t ldx, const W* wb, int64_t K, float* out) {
  __m256 a0[M], a1[M];
#pragma GCC unroll 6
  for (int m = 0; m < M; ++m) a0[m] = a1[m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 w0, w1;
    load16(wb + k * LANES, w0, w1);
#pragma GCC unroll 6
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_broadcast_ss(x + m * ldx + k);
      a0[m] = _mm256_fmadd_ps(xv, w0, a0[m]);
      a1[m] = _mm256_fmadd_ps(xv, w1, a1[m]);
    }
  }
#pragma GCC unroll 6
  for (int m = 0; m < M; ++m) {
    _mm256_storeu_ps(out + m * LANES, a0[m]);
    _mm256_storeu_ps(out + m * LANES + 8, a1[m]);
  }
}

// M rows x 8 outputs (one half of a block; M <= 12: M accumulators + 1 weight + 1 broadcast <= 14 registers).
template <int M, typename W>
__attribute__((always_inline)) inline void tile8(const float* x, int64_t ldx, const W* wb, int64_t K, float* out) {
  __m256 a[M];
#pragma GCC unroll 12
  for (int m = 0; m < M; ++m) a[m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 w = load8(wb + k * LANES);
#pragma GCC unroll 12
    for (int m = 0; m < M; ++m) a[m] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + m * ldx + k), w, a[m]);
  }
#pragma GCC unroll 12
  for (int m = 0; m < M; ++m) _mm256_storeu_ps(out + m * LANES, a[m]);
}

template <int M, typename W>
void rows16(const float* x, int64_t ldx, const W* wb, int64_t K, float* out) { tile16<M>(x, ldx, wb, K, out); }

template <int M, typename W>
void rows8x2(const float* x, int64_t ldx, const W* wb, int64_t K, float* out) {
  tile8<M>(x, ldx, wb, K, out);          // the block's first half (strided), then its second half
  tile8<M>(x, ldx, wb + 8, K, out + 8);  // while the block is still in cache
}

template <typename W>
using TileFn = void (*)(const float*, int64_t, const W*, int64_t, float*);

// m rows (1..12) against one block: up to 6 rows in one sweep of both halves, 7..12 rows half a block at a time
// (measured on our 2-core Zen 3: fewer sweeps over the weights beat the extra registers of wider tiles).
template <typename W>
TileFn<W> tile_for(int64_t m) {
  static const TileFn<W> fns[13] = {nullptr,          rows16<1, W>,    rows16<2, W>,    rows16<3, W>,   rows16<4, W>,
                                    rows16<5, W>,     rows16<6, W>,    rows8x2<7, W>,   rows8x2<8, W>,  rows8x2<9, W>,
                                    rows8x2<10, W>,   rows8x2<11, W>,  rows8x2<12, W>};
  return fns[m];
}

template <typename W>
void linear(const float* xp, const W* wp, const float* bp, float* yp, int64_t M, int64_t N, int64_t K, int64_t B) {
  // up to 12 rows in one sweep over all the weights; a longer pass (prefill) goes block by block, 6 rows at a time,
  // while the block stays in cache
  const int64_t sweep = M <= 12 ? M : 6;
  at::parallel_for(0, B, 4, [&](int64_t lo, int64_t hi) {
    alignas(32) float out[12 * LANES];
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t n0 = b * LANES, width = std::min(LANES, N - n0);
      for (int64_t m0 = 0; m0 < M; m0 += sweep) {
        const int64_t m = std::min(sweep, M - m0);
        tile_for<W>(m)(xp + m0 * K, K, wp + b * K * LANES, K, out);
        for (int64_t r = 0; r < m; ++r)
          for (int64_t j = 0; j < width; ++j)
            yp[(m0 + r) * N + n0 + j] = bp ? out[r * LANES + j] + bp[n0 + j] : out[r * LANES + j];
      }
    }
  });
}

template <typename T>
void pack(const T* src, T* dst, int64_t N, int64_t K, int64_t B) {
  at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b)
      for (int64_t j = 0; j < LANES && b * LANES + j < N; ++j) {
        const T* row = src + (b * LANES + j) * K;
        T* col = dst + b * K * LANES + j;
        for (int64_t k = 0; k < K; ++k) col[k * LANES] = row[k];
      }
  });
}

}  // namespace

// weight (N, K) float32 or bfloat16 -> (ceil(N/16), K, 16) of the same dtype: block b, row k holds
// w[16b .. 16b+15][k] (zero past N).
torch::Tensor pack_weight(torch::Tensor weight) {
  const auto dt = weight.scalar_type();
  TORCH_CHECK((dt == torch::kFloat || dt == torch::kBFloat16) && weight.dim() == 2,
              "weight must be a float32 or bfloat16 (N, K) matrix");
  const int64_t N = weight.size(0), K = weight.size(1), B = (N + LANES - 1) / LANES;
  auto w = weight.contiguous();
  auto packed = torch::zeros({B, K, LANES}, weight.options());
  if (dt == torch::kFloat)
    pack(w.data_ptr<float>(), packed.data_ptr<float>(), N, K, B);
  else
    pack(reinterpret_cast<const uint16_t*>(w.data_ptr()), reinterpret_cast<uint16_t*>(packed.data_ptr()), N, K, B);
  return packed;
}

// x (..., K) float32, packed (B, K, 16) from pack_weight, bias (N,) float32 or empty, N outputs -> (..., N) float32.
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor bias, int64_t N) {
  const auto dt = packed.scalar_type();
  TORCH_CHECK(x.scalar_type() == torch::kFloat, "input must be float32");
  TORCH_CHECK(dt == torch::kFloat || dt == torch::kBFloat16, "packed weight must be float32 or bfloat16");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == LANES && packed.is_contiguous(), "weight must come from pack_weight");
  const int64_t B = packed.size(0), K = packed.size(1);
  TORCH_CHECK(N > (B - 1) * LANES && N <= B * LANES, "N=", N, " does not match the packed weight's ", B, " blocks");
  TORCH_CHECK(x.size(-1) == K, "input width ", x.size(-1), " does not match the weight's ", K);
  TORCH_CHECK(bias.numel() == 0 || (bias.numel() == N && bias.scalar_type() == torch::kFloat),
              "bias must be N float32 values");
  auto xc = x.reshape({-1, K}).contiguous();
  const int64_t M = xc.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  if (dt == torch::kFloat)
    linear(xc.data_ptr<float>(), packed.data_ptr<float>(), bp, y.data_ptr<float>(), M, N, K, B);
  else
    linear(xc.data_ptr<float>(), reinterpret_cast<const uint16_t*>(packed.data_ptr()), bp, y.data_ptr<float>(), M, N,
           K, B);
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_weight", &pack_weight, "pack an (N, K) float32 or bfloat16 weight for packed_linear");
  m.def("packed_linear", &packed_linear, "float32 linear over a packed float32 or bfloat16 weight");
}
