// The int8 path on AVX2: 8 lanes per vector, each block in two halves; maddubs + madd dot four u8 weights with four
// s8 inputs per lane (no pair can saturate: 2 x 63 x 127 < 32767), the same integer sums as vpdpbusd
// (quant_int8_kernel.h); the pragma below compiles the whole file for it, nothing else.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "quant_int8.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace {

struct Vec8 {
  static constexpr int W = 8, RMAX = 2;
  using F = __m256;
  using I = __m256i;
  static SV_ALWAYS I izero() { return _mm256_setzero_si256(); }
  static SV_ALWAYS F fzero() { return _mm256_setzero_ps(); }
  static SV_ALWAYS I load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static SV_ALWAYS I mask(I a, int c) { return _mm256_and_si256(a, _mm256_set1_epi8(char(c))); }
  static SV_ALWAYS I srl(I a, int n) { return _mm256_srli_epi16(a, n); }
  static SV_ALWAYS I sll(I a, int n) { return _mm256_slli_epi16(a, n); }
  static SV_ALWAYS I bor(I a, I b) { return _mm256_or_si256(a, b); }
  static SV_ALWAYS I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
  static SV_ALWAYS I isub(I a, int32_t c) { return _mm256_sub_epi32(a, _mm256_set1_epi32(c)); }
  static SV_ALWAYS I bcast(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
  }
  static SV_ALWAYS I dot(I acc, I w, I x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
  }
  static SV_ALWAYS F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static SV_ALWAYS F f16(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static SV_ALWAYS F u8f(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static SV_ALWAYS F i8f(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static SV_ALWAYS F set1(float v) { return _mm256_set1_ps(v); }
  static SV_ALWAYS F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static SV_ALWAYS F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static SV_ALWAYS F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static SV_ALWAYS void store(float* p, F v) { _mm256_storeu_ps(p, v); }
};

#include "quant_int8_kernel.h"

}  // namespace

extern "C" void sv8_blocks_avx2(const sv8::Job* job, int64_t lo, int64_t hi) { run_blocks8(job, lo, hi); }

#pragma GCC pop_options
