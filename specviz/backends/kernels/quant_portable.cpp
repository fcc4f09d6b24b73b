// The quantised kernel's portable path: no intrinsics, for any CPU (ARM laptops), and the reference the vector paths
// are tested against. Each block is dequantised exactly (quant_common.h), then every output lane accumulates
// x[m][k] * w[n][k] with std::fma over k in order from 0, plus the bias: the vector paths' operations, lane by lane.
// It also holds the int8 path's portable blocks (quant_int8.h).
#include <cmath>

#include "quant_common.h"
#include "quant_int8.h"

extern "C" void sv_blocks_portable(const sv::Job* job, int64_t lo, int64_t hi) {
  const int64_t K = job->K, N = job->N;
  float* w = job->scratch;
  for (int64_t b = lo; b < hi; ++b) {
    sv::dequant_block(job->type, job->w + b * sv::row_bytes(job->type, K), K, w);
    const int64_t n0 = b * sv::LANES, width = N - n0 < sv::LANES ? N - n0 : sv::LANES;
    for (int64_t m = 0; m < job->M; ++m) {
      const float* x = job->x + m * K;
      float acc[sv::LANES] = {0};
      for (int64_t k = 0; k < K; ++k) {
        const float xv = x[k];
        for (int j = 0; j < sv::LANES; ++j) acc[j] = std::fma(xv, w[k * sv::LANES + j], acc[j]);
      }
      float* y = job->y + m * N + n0;
      for (int64_t j = 0; j < width; ++j) y[j] = job->bias ? acc[j] + job->bias[n0 + j] : acc[j];
    }
  }
}

// the int8 path's portable blocks (quant_int8.h): integer sums lane by lane, the same float epilogue
extern "C" void sv8_blocks_portable(const sv8::Job* job, int64_t lo, int64_t hi) { sv8::blocks_portable(*job, lo, hi); }
