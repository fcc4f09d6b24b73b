// The quantised kernel's AVX-512 path: 16 lanes, one block, per vector (quant_kernel.h), chosen at run time where
// the CPU has AVX-512F; the whole file is compiled for it by the pragma below, nothing else is.
#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "quant_common.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")

namespace {

struct Vec {
  static constexpr int W = 16, MAX_FUSED = 8, TILE = 6, TILE_UNITS = 4;  // tiles: 24 accumulators of 32 registers
  using F = __m512;
  using I = __m512i;
  static SV_ALWAYS F zero() { return _mm512_setzero_ps(); }
  static SV_ALWAYS F bcast(const float* p) { return _mm512_set1_ps(*p); }
  static SV_ALWAYS F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static SV_ALWAYS F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static SV_ALWAYS F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static SV_ALWAYS F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  // a table lookup (vpermps reads only each index's low 4 bits): one shuffle instead of a mask and a conversion
  static SV_ALWAYS F nibble(I a) {
    return _mm512_permutexvar_ps(a, _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  static SV_ALWAYS I u8(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static SV_ALWAYS I i8(const uint8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static SV_ALWAYS F f16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static SV_ALWAYS I band(I a, int c) { return _mm512_and_si512(a, _mm512_set1_epi32(c)); }
  static SV_ALWAYS I bor(I a, I b) { return _mm512_or_si512(a, b); }
  static SV_ALWAYS I sll(I a, int n) { return _mm512_slli_epi32(a, n); }
  static SV_ALWAYS I srl(I a, int n) { return _mm512_srli_epi32(a, n); }
  static SV_ALWAYS I isub(I a, int c) { return _mm512_sub_epi32(a, _mm512_set1_epi32(c)); }
  static SV_ALWAYS F load(const float* p) { return _mm512_loadu_ps(p); }
  static SV_ALWAYS void store(float* p, F v) { _mm512_storeu_ps(p, v); }
};

#include "quant_kernel.h"

}  // namespace

extern "C" void sv_blocks_avx512(const sv::Job* job, int64_t lo, int64_t hi) { run_blocks(job, lo, hi); }

#pragma GCC pop_options
