// The int8 path on AVX-512 VNNI: 16 lanes per vector, vpdpbusd dots four u8 weights with four s8 inputs per lane
// (quant_int8_kernel.h), chosen at run time where the CPU has AVX-512 F, BW and VNNI; the pragma below compiles the
// whole file for it, nothing else.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "quant_int8.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vnni,avx2,fma,f16c")

namespace {

struct Vec8 {
  static constexpr int W = 16, RMAX = 8;
  using F = __m512;
  using I = __m512i;
  static SV_ALWAYS I izero() { return _mm512_setzero_si512(); }
  static SV_ALWAYS F fzero() { return _mm512_setzero_ps(); }
  static SV_ALWAYS I load(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static SV_ALWAYS I mask(I a, int c) { return _mm512_and_si512(a, _mm512_set1_epi8(char(c))); }
  static SV_ALWAYS I srl(I a, int n) { return _mm512_srli_epi16(a, n); }
  static SV_ALWAYS I sll(I a, int n) { return _mm512_slli_epi16(a, n); }
  static SV_ALWAYS I bor(I a, I b) { return _mm512_or_si512(a, b); }
  static SV_ALWAYS I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
  static SV_ALWAYS I isub(I a, int32_t c) { return _mm512_sub_epi32(a, _mm512_set1_epi32(c)); }
  static SV_ALWAYS I bcast(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static SV_ALWAYS I dot(I acc, I w, I x) { return _mm512_dpbusd_epi32(acc, w, x); }
  static SV_ALWAYS F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static SV_ALWAYS F f16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static SV_ALWAYS F u8f(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static SV_ALWAYS F i8f(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static SV_ALWAYS F set1(float v) { return _mm512_set1_ps(v); }
  static SV_ALWAYS F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static SV_ALWAYS F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static SV_ALWAYS F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static SV_ALWAYS void store(float* p, F v) { _mm512_storeu_ps(p, v); }
};

#include "quant_int8_kernel.h"

}  // namespace

extern "C" void sv8_blocks_avx512(const sv8::Job* job, int64_t lo, int64_t hi) { run_blocks8(job, lo, hi); }

#pragma GCC pop_options
