// A float32 linear layer for passes of a few rows (decode and verification) on AVX2 CPUs: it streams the weight
// matrix from memory once for all rows, where a one-row pass is memory-bound and the BLAS paths cost about twice a
// one-row pass for 2..16 rows. Every output is one 8-lane accumulator over k in order, reduced in a fixed order, so a
// row's result is bitwise the same whatever the number of rows fed with it (batch-invariant).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);                       // 4 lanes
  __m128 sh = _mm_movehl_ps(lo, lo);
  lo = _mm_add_ps(lo, sh);                       // 2 lanes
  sh = _mm_shuffle_ps(lo, lo, 0x1);
  return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}

// NB weight rows (outputs n0..n0+NB-1) against M input rows; K % 8 == 0 is handled by the caller's tail.
template <int M, int NB>
__attribute__((always_inline)) inline void block(const float* x, const float* w, float* y, int64_t n0, int64_t N, int64_t K, const float* b) {
  __m256 acc[M][NB];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm256_setzero_ps();
  const int64_t K8 = K & ~int64_t(7);
  for (int64_t k = 0; k < K8; k += 8) {
    __m256 wv[NB];
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) wv[j] = _mm256_loadu_ps(w + (n0 + j) * K + k);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * K + k);
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) acc[m][j] = _mm256_fmadd_ps(xv, wv[j], acc[m][j]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NB; ++j) {
      float s = hsum(acc[m][j]);
      for (int64_t k = K8; k < K; ++k) s += x[m * K + k] * w[(n0 + j) * K + k];
      y[m * N + n0 + j] = b ? s + b[n0 + j] : s;
    }
}

template <int M, int NB>
void run(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t K) {
  const int64_t blocks = N / NB;
  at::parallel_for(0, blocks, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) block<M, NB>(x, w, y, i * NB, N, K, b);
  });
  for (int64_t n = blocks * NB; n < N; ++n) block<M, 1>(x, w, y, n, N, K, b);
}

// register budget (16 ymm): M * NB accumulators + NB weights + 1 input
template <int M>
void dispatch_nb(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t K) {
  constexpr int NB = M <= 2 ? 4 : M <= 4 ? 3 : 2;
  run<M, NB>(x, w, b, y, N, K);
}

void rows(int64_t m, const float* x, const float* w, const float* b, float* y, int64_t N, int64_t K) {
  switch (m) {
    case 1: return dispatch_nb<1>(x, w, b, y, N, K);
    case 2: return dispatch_nb<2>(x, w, b, y, N, K);
    case 3: return dispatch_nb<3>(x, w, b, y, N, K);
    case 4: return dispatch_nb<4>(x, w, b, y, N, K);
    case 5: return dispatch_nb<5>(x, w, b, y, N, K);
    default: return dispatch_nb<6>(x, w, b, y, N, K);
  }
}

}  // namespace

// x (..., K) float32, weight (N, K) float32 contiguous, bias (N,) or empty -> (..., N).
torch::Tensor small_linear(torch::Tensor x, torch::Tensor weight, torch::Tensor bias) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat, "float32 only");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "weight must be a contiguous (N, K) matrix");
  const int64_t K = weight.size(1), N = weight.size(0);
  TORCH_CHECK(x.size(-1) == K, "input width ", x.size(-1), " does not match the weight's ", K);
  auto xc = x.reshape({-1, K}).contiguous();
  const int64_t M = xc.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  // up to 6 rows in one sweep over the weights; more go 4 at a time (measured fastest per row on our CPU)
  for (int64_t m0 = 0, m = 0; m0 < M; m0 += m) {
    m = M - m0 <= 6 ? M - m0 : 4;
    rows(m, xc.data_ptr<float>() + m0 * K, weight.data_ptr<float>(), b, y.data_ptr<float>() + m0 * N, N, K);
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("small_linear", &small_linear, "few-row float32 linear"); }
