// The quantised kernel's AVX2 + FMA path: 8 lanes per vector, each block in two halves (quant_kernel.h), the
// baseline on x86; the whole file is compiled for it by the pragma below, nothing else is.
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "quant_common.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace {

struct Vec {
  static constexpr int W = 8, MAX_FUSED = 6, TILE = 6, TILE_UNITS = 2;  // tiles: 12 accumulators of 16 registers
  using F = __m256;
  using I = __m256i;
  static SV_ALWAYS F zero() { return _mm256_setzero_ps(); }
  static SV_ALWAYS F bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static SV_ALWAYS F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static SV_ALWAYS F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static SV_ALWAYS F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static SV_ALWAYS F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static SV_ALWAYS F nibble(I a) { return cvt(band(a, 15)); }  // (vpermps reads 3 index bits here, not 4)
  static SV_ALWAYS I u8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static SV_ALWAYS I i8(const uint8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static SV_ALWAYS F f16(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static SV_ALWAYS I band(I a, int c) { return _mm256_and_si256(a, _mm256_set1_epi32(c)); }
  static SV_ALWAYS I bor(I a, I b) { return _mm256_or_si256(a, b); }
  static SV_ALWAYS I sll(I a, int n) { return _mm256_slli_epi32(a, n); }
  static SV_ALWAYS I srl(I a, int n) { return _mm256_srli_epi32(a, n); }
  static SV_ALWAYS I isub(I a, int c) { return _mm256_sub_epi32(a, _mm256_set1_epi32(c)); }
  static SV_ALWAYS F load(const float* p) { return _mm256_loadu_ps(p); }
  static SV_ALWAYS void store(float* p, F v) { _mm256_storeu_ps(p, v); }
};

#include "quant_kernel.h"

}  // namespace

extern "C" void sv_blocks_avx2(const sv::Job* job, int64_t lo, int64_t hi) { run_blocks(job, lo, hi); }

#pragma GCC pop_options
