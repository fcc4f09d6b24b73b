// The int8 path's layout and arithmetic, shared by its translation units: activations quantised to 8 bits per 32
// inputs, weights kept as their GGUF integers, integer dot products per sub-block, then a fixed float epilogue.
//
// A weight (N, K) is repacked into ceil(N/16) blocks of 16 output lanes; each 256-input super-group of a block is a
// header, then the GGUF's quant bytes with each lane's bytes four at a time (dword j of a 64-byte row: lane j), so
// one vector of integers dots four consecutive inputs per lane (vpdpbusd, or maddubs + madd on AVX2):
//   Q4_K: d[16] f16, dmin[16] f16, sc[8][16] u8, m[8][16] u8 (320 bytes); then for each pair P of sub-blocks and
//         c < 8, 16 lanes x 4 bytes of qs[32 P + 4 c ..]: low nibbles sub-block 2P's inputs 4c.., high 2P+1's
//   Q6_K: d[16] f16, 32 bytes unused, sc[16][16] i8 (320 bytes); then ql for r < 2, h < 2, c < 8 (16 x 4 bytes of
//         ql[64 r + 32 h + 4 c ..]), then qh for r < 2, c < 8 (16 x 4 bytes of qh[32 r + 4 c ..])
// Each row's inputs are quantised once per pass: per 32 inputs, d = amax / 127 and q = round(x * 127 / amax); the
// sums of q per 16 inputs correct for Q4_K's mins and Q6_K's offset of 32. A sub-block's integer sum is exact in any
// order; its float epilogue is one fixed sequence per lane (the canonical order below), the same on every path and
// for any number of rows, so a row's result never depends on the other rows of its pass, nor on the ISA.
//   Q4_K sub-block t (32 inputs): e = (d*sc) * float(sum q*xq) - (dmin*m) * float(sum xq); acc = fma(dx, e, acc)
//   Q6_K sub-block b (16 inputs): acc = fma(dx, (d*sc) * float(sum q*xq - 32 * sum xq), acc)
// Canonical order: super-groups in order; Q4_K sub-blocks t = 0..7; Q6_K for r < 2, half < 2, s < 4 the sub-block
// 8r + 2s + half (inputs 128 r + 32 s + 16 half ..).
#pragma once
#include <cmath>
#include <cstdint>

#include "quant_common.h"

namespace sv8 {

constexpr int64_t HDR = 320;               // header bytes of a super-group (both types)
constexpr int64_t Q4K_SG = HDR + 4 * 8 * 64;  // 2368 per 256 inputs
constexpr int64_t Q6K_QH = HDR + 2 * 2 * 8 * 64;  // where Q6_K's qh rows start
constexpr int64_t Q6K_SG = Q6K_QH + 2 * 8 * 64;   // 3392 per 256 inputs

inline bool takes(int type) { return type == sv::Q4_K || type == sv::Q6_K; }
inline int64_t group_bytes(int type) { return type == sv::Q4_K ? Q4K_SG : type == sv::Q6_K ? Q6K_SG : 0; }
inline int64_t row_bytes(int type, int64_t K) { return takes(type) && K > 0 && K % 256 == 0 ? K / 256 * group_bytes(type) : 0; }

// one pass: y (M, N) = x (M, K) times the repacked weight, plus bias, with x already quantised
struct Job {
  int type;
  const int8_t* xq;    // M x K
  const float* xd;     // M x K / 32: the scale of each 32 inputs
  const int32_t* xs;   // M x K / 16: the sum of each 16 quantised inputs
  int64_t M;
  const uint8_t* w;
  const float* bias;
  float* y;
  int64_t N, K;
};

// x's row quantised: q (K), d (K / 32), s (K / 16). One scalar routine for every path (it runs once per row per pass).
inline void quantise_row(const float* x, int64_t K, int8_t* q, float* d, int32_t* s) {
  for (int64_t g = 0; g < K / 32; ++g) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[32 * g + i]));
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[g] = amax / 127.0f;
    for (int h = 0; h < 2; ++h) {
      int32_t sum = 0;
      for (int i = 16 * h; i < 16 * h + 16; ++i) {
        float v = std::nearbyint(x[32 * g + i] * id);  // round to nearest even, as the vector conversion does
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[32 * g + i] = int8_t(v);
        sum += int32_t(v);
      }
      s[2 * g + h] = sum;
    }
  }
}

inline uint8_t q4k_weight(const uint8_t* sg, int j, int64_t i) {  // input i < 256 of lane j: 0..15
  const int t = int(i / 32), c = int(i % 32) / 4, b = int(i % 4);
  const uint8_t byte = sg[HDR + ((t / 2 * 8 + c) * 16 + j) * 4 + b];
  return t & 1 ? byte >> 4 : byte & 15;
}

inline uint8_t q6k_weight(const uint8_t* sg, int j, int64_t i) {  // input i < 256 of lane j: 0..63
  const int r = int(i / 128), s = int(i % 128) / 32, c = int(i % 32) / 4, b = int(i % 4);
  const uint8_t lq = sg[HDR + (((r * 2 + (s & 1)) * 8 + c) * 16 + j) * 4 + b];
  const uint8_t hq = sg[Q6K_QH + ((r * 8 + c) * 16 + j) * 4 + b];
  return uint8_t((s >= 2 ? lq >> 4 : lq & 15) | (((hq >> (2 * s)) & 3) << 4));
}

// lane j's K float32 weights, exactly as gguf's reference dequantiser forms them (compiled with -ffp-contract=off)
inline void dequant_lane(int type, const uint8_t* p, int64_t K, int j, float* out) {
  for (int64_t s = 0; s < K / 256; ++s) {
    const uint8_t* sg = p + s * group_bytes(type);
    const float d = sv::half_to_float(sv::load_u16(sg + 2 * j));
    if (type == sv::Q4_K) {
      const float dm = sv::half_to_float(sv::load_u16(sg + 32 + 2 * j));
      for (int64_t i = 0; i < 256; ++i) {
        const int t = int(i / 32);
        const float sc = d * float(sg[64 + 16 * t + j]), mn = dm * float(sg[192 + 16 * t + j]);
        out[s * 256 + i] = sc * float(q4k_weight(sg, j, i)) - mn;
      }
    } else {
      for (int64_t i = 0; i < 256; ++i) {
        const float sc = d * float(int8_t(sg[64 + 16 * (i / 16) + j]));
        out[s * 256 + i] = sc * float(int(q6k_weight(sg, j, i)) - 32);
      }
    }
  }
}

// the portable path: blocks [lo, hi), lane by lane in the canonical order
inline void blocks_portable(const Job& jb, int64_t lo, int64_t hi) {
  const int64_t K = jb.K, rb = row_bytes(jb.type, K);
  for (int64_t b = lo; b < hi; ++b) {
    const uint8_t* blk = jb.w + b * rb;
    const int64_t n0 = b * sv::LANES, width = jb.N - n0 < sv::LANES ? jb.N - n0 : sv::LANES;
    for (int64_t m = 0; m < jb.M; ++m) {
      const int8_t* xq = jb.xq + m * K;
      const float* xd = jb.xd + m * (K / 32);
      const int32_t* xs = jb.xs + m * (K / 16);
      for (int j = 0; j < int(width); ++j) {
        float acc = 0.0f;
        for (int64_t s = 0; s < K / 256; ++s) {
          const uint8_t* sg = blk + s * group_bytes(jb.type);
          const int64_t k0 = s * 256;
          const float d = sv::half_to_float(sv::load_u16(sg + 2 * j));
          if (jb.type == sv::Q4_K) {
            const float dm = sv::half_to_float(sv::load_u16(sg + 32 + 2 * j));
            for (int t = 0; t < 8; ++t) {
              int32_t dot = 0;
              for (int64_t i = 32 * t; i < 32 * t + 32; ++i) dot += int32_t(q4k_weight(sg, j, i)) * xq[k0 + i];
              const int32_t xsum = xs[(k0 + 32 * t) / 16] + xs[(k0 + 32 * t) / 16 + 1];
              const float dsc = d * float(sg[64 + 16 * t + j]), dmn = dm * float(sg[192 + 16 * t + j]);
              const float e = dsc * float(dot) - dmn * float(xsum);
              acc = std::fma(xd[(k0 + 32 * t) / 32], e, acc);
            }
          } else {
            for (int r = 0; r < 2; ++r)
              for (int half = 0; half < 2; ++half)
                for (int sq = 0; sq < 4; ++sq) {
                  const int sb = 8 * r + 2 * sq + half;
                  int32_t dot = 0;
                  for (int64_t i = 16 * sb; i < 16 * sb + 16; ++i) dot += int32_t(q6k_weight(sg, j, i)) * xq[k0 + i];
                  dot -= 32 * xs[(k0 + 16 * sb) / 16];
                  const float dsc = d * float(int8_t(sg[64 + 16 * sb + j]));
                  acc = std::fma(xd[(k0 + 16 * sb) / 32], dsc * float(dot), acc);
                }
          }
        }
        jb.y[m * jb.N + n0 + j] = jb.bias ? acc + jb.bias[n0 + j] : acc;
      }
    }
  }
}

}  // namespace sv8

extern "C" {
void sv8_blocks_portable(const sv8::Job* job, int64_t lo, int64_t hi);
#if defined(__x86_64__) || defined(_M_X64)
void sv8_blocks_avx2(const sv8::Job* job, int64_t lo, int64_t hi);
void sv8_blocks_avx512(const sv8::Job* job, int64_t lo, int64_t hi);
#endif
}
