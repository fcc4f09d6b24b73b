// The repacked GGUF block layouts shared by every translation unit of the quantised kernel (quant_linear.cpp and
// the per-ISA files), and the exact scalar dequantisation from them (the portable path and row lookups).
//
// A weight (N, K) is repacked into ceil(N/16) blocks of 16 output rows ("lanes"); each block is one contiguous run of
// row_bytes(type, K) bytes walking k in order, lane-interleaved so that 16 (or 8) lanes load as one vector:
//   Q4_K per 256 k: d[16] f16, dmin[16] f16; then per 32 k: sc[16] u8, m[16] u8, 16 x (16 bytes: q[k] | q[k+1] << 4)
//   Q6_K per 256 k: d[16] f16; then per 16 k: sc[16] i8, 8 x 16 low-nibble pairs, 4 x 16 bytes of four 2-bit highs
//   Q5_0 per 32 k:  d[16] f16, 16 x 16 low-nibble pairs, 4 x 16 bytes of eight fifth bits (bit i: k = 8o + i)
//   Q8_0 per 32 k:  d[16] f16, 32 x 16 int8
// The f16 scales and the small integer scales are kept as stored in the GGUF (about 4.6 / 6.6 / 5.5 / 8.5 bits a
// weight), and every weight is formed in float32 exactly as gguf's reference dequantiser forms it:
//   Q4_K (d*sc)*q - (dmin*m)  (a multiply, then a subtract: never fused), Q6_K (d*sc)*(q-32), Q5_0 d*(q-16), Q8_0 q*d.
#pragma once
#include <cstdint>
#include <cstring>

#define SV_ALWAYS __attribute__((always_inline)) inline

namespace sv {

// ggml type ids (gguf_reader.py)
constexpr int Q5_0 = 6, Q8_0 = 8, Q4_K = 12, Q6_K = 14;
constexpr int64_t LANES = 16;

// bytes of one super-group (per 16 lanes), and how many k it spans
constexpr int64_t Q4K_SUB = 32 + 16 * 16, Q4K_SG = 64 + 8 * Q4K_SUB;  // 2368 per 256 k
constexpr int64_t Q6K_SUB = 16 + 128 + 64, Q6K_SG = 32 + 16 * Q6K_SUB;  // 3360 per 256 k
constexpr int64_t Q50_SG = 32 + 256 + 64;                               // 352 per 32 k
constexpr int64_t Q80_SG = 32 + 512;                                    // 544 per 32 k

inline int64_t group_k(int type) { return type == Q4_K || type == Q6_K ? 256 : 32; }
inline int64_t group_bytes(int type) {
  switch (type) {
    case Q4_K: return Q4K_SG;
    case Q6_K: return Q6K_SG;
    case Q5_0: return Q50_SG;
    case Q8_0: return Q80_SG;
    default: return 0;
  }
}
// a long pass's tiles run over panels of this many inputs (rounded down to the type's group), dequantised in scratch
constexpr int64_t PANEL_K = 512;
// floats of a thread's scratch for a pass of up to `rows` rows of K inputs: the portable path's whole block
// (K x 16), or a vector path's panel of up to 64 floats per input and its accumulators (64 per row)
inline int64_t scratch_floats(int64_t K, int64_t rows) {
  const int64_t tiles = 64 * PANEL_K + 64 * rows;
  return K * LANES > tiles ? K * LANES : tiles;
}

// bytes of one repacked block of 16 rows; 0 for a type or width this kernel does not take
inline int64_t row_bytes(int type, int64_t K) {
  const int64_t g = group_k(type), b = group_bytes(type);
  return b && K > 0 && K % g == 0 ? K / g * b : 0;
}

// One linear pass: y (M, N) = x (M, K) times the repacked weight, plus bias (or none).
struct Job {
  int type;
  const float* x;
  int64_t M;  // rows of x in this pass
  const uint8_t* w;
  const float* bias;  // N values or null
  float* y;
  int64_t N, K;
  float* scratch;  // per thread, scratch_floats(K, M) (dequantised weights, for passes of many rows)
};

// f16 -> f32, exactly (F16C's conversion; NaN payloads aside, which no sane scale has)
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      uint32_t e = 113;
      while (!(man & 0x400u)) {
        man <<= 1;
        --e;
      }
      bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t load_u16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }

// Lane j's K float32 weights of one repacked block, out[k * stride], in the reference's arithmetic (compiled with
// -ffp-contract=off: a * b - c stays a multiply and a subtract).
inline void dequant_lane(int type, const uint8_t* p, int64_t K, int j, float* out, int64_t stride) {
  if (type == Q4_K) {
    for (int64_t s = 0; s < K / 256; ++s, p += Q4K_SG) {
      const float d = half_to_float(load_u16(p + 2 * j)), dm = half_to_float(load_u16(p + 32 + 2 * j));
      for (int t = 0; t < 8; ++t) {
        const uint8_t* sub = p + 64 + t * Q4K_SUB;
        const float sc = d * float(sub[j]), mn = dm * float(sub[16 + j]);
        for (int pp = 0; pp < 16; ++pp) {
          const uint8_t b = sub[32 + pp * 16 + j];
          float* o = out + (s * 256 + t * 32 + 2 * pp) * stride;
          o[0] = sc * float(b & 15) - mn;
          o[stride] = sc * float(b >> 4) - mn;
        }
      }
    }
  } else if (type == Q6_K) {
    for (int64_t s = 0; s < K / 256; ++s, p += Q6K_SG) {
      const float d = half_to_float(load_u16(p + 2 * j));
      for (int t = 0; t < 16; ++t) {
        const uint8_t* sub = p + 32 + t * Q6K_SUB;
        const float sc = d * float(int8_t(sub[j]));
        for (int r = 0; r < 16; ++r) {
          const uint8_t lo = sub[16 + (r / 2) * 16 + j], hi = sub[144 + (r / 4) * 16 + j];
          const int q = ((r & 1 ? lo >> 4 : lo & 15) | (((hi >> (2 * (r & 3))) & 3) << 4)) - 32;
          out[(s * 256 + t * 16 + r) * stride] = sc * float(q);
        }
      }
    }
  } else if (type == Q5_0) {
    for (int64_t s = 0; s < K / 32; ++s, p += Q50_SG) {
      const float d = half_to_float(load_u16(p + 2 * j));
      for (int r = 0; r < 32; ++r) {
        const uint8_t lo = p[32 + (r / 2) * 16 + j], hi = p[288 + (r / 8) * 16 + j];
        const int q = ((r & 1 ? lo >> 4 : lo & 15) | (((hi >> (r & 7)) & 1) << 4)) - 16;
        out[(s * 32 + r) * stride] = d * float(q);
      }
    }
  } else if (type == Q8_0) {
    for (int64_t s = 0; s < K / 32; ++s, p += Q80_SG) {
      const float d = half_to_float(load_u16(p + 2 * j));
      for (int r = 0; r < 32; ++r) out[(s * 32 + r) * stride] = float(int8_t(p[32 + r * 16 + j])) * d;
    }
  }
}

// The 16 x K weights of one repacked block: out[k * 16 + lane].
inline void dequant_block(int type, const uint8_t* p, int64_t K, float* out) {
  for (int j = 0; j < int(LANES); ++j) dequant_lane(type, p, K, j, out + j, LANES);
}

}  // namespace sv

// Per-ISA entry points: blocks [lo, hi) of one pass (each defined in its own translation unit).
extern "C" {
void sv_blocks_portable(const sv::Job* job, int64_t lo, int64_t hi);
#if defined(__x86_64__) || defined(_M_X64)
void sv_blocks_avx2(const sv::Job* job, int64_t lo, int64_t hi);
void sv_blocks_avx512(const sv::Job* job, int64_t lo, int64_t hi);
#endif
}
