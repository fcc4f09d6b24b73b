// The quantised kernel's entry points (called through ctypes from quant.py): repacking GGUF blocks into the layout
// of quant_common.h, the linear pass over them on the path chosen at run time (AVX-512, AVX2 + FMA, or portable),
// and exact row lookups (embeddings, the LM head's rows). Threads: at::parallel_for over output blocks, torch's pool.
#include <ATen/Parallel.h>

#if defined(__SSE2__)
#include <emmintrin.h>  // baseline on x86-64: the repacking's byte transpose
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quant_common.h"
#include "quant_int8.h"

namespace {

constexpr int ISA_PORTABLE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2;
constexpr int64_t CHUNK_ROWS = 64;  // rows per sweep of a long pass (prefill): their inputs stay in cache

// GGUF's own block: (elements, bytes)
int64_t gguf_block_k(int type) { return sv::group_k(type); }
int64_t gguf_block_bytes(int type) {
  switch (type) {
    case sv::Q4_K: return 144;
    case sv::Q6_K: return 210;
    case sv::Q5_0: return 22;
    case sv::Q8_0: return 34;
    default: return 0;
  }
}

bool isa_ok(int isa) {
  if (isa == ISA_PORTABLE) return true;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (isa == ISA_AVX2) return avx2;
  if (isa == ISA_AVX512) return avx2 && __builtin_cpu_supports("avx512f");
#endif
  return false;
}

using BlocksFn = void (*)(const sv::Job*, int64_t, int64_t);

BlocksFn blocks_fn(int isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == ISA_AVX512) return sv_blocks_avx512;
  if (isa == ISA_AVX2) return sv_blocks_avx2;
#endif
  return sv_blocks_portable;
}

float* scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (int64_t(buf.size()) < floats) buf.resize(floats);
  return buf.data();
}

// --- repacking. Each super-group of a block is a header of f16 scales (lane j at bytes 2j: d, then dmin for Q4_K)
// and then "rows" of 16 bytes, one byte per lane. A lane's bytes of those rows (its "image") are computed from its
// GGUF block alone, contiguously; 16 images are then interleaved (a byte transpose) into the block.

constexpr int MAX_IMAGE = 208;  // image bytes of the largest super-group (Q6_K)

int header_halves(int type) { return type == sv::Q4_K ? 2 : 1; }
int image_bytes(int type) { return int(sv::group_bytes(type) - 32 * header_halves(type)) / int(sv::LANES); }
int half_at(int type, int h) { return type == sv::Q6_K ? 208 : 2 * h; }  // where a block's f16 scales sit

// dst[p] = nibble(src[2p]) | nibble(src[2p + 1]) << 4 for p < n (a multiple of 4), each nibble the low one (sh 0)
// or the high one (sh 4) of its byte: eight bytes at a time in a 64-bit word
void pack_pairs(const uint8_t* src, int sh, uint8_t* dst, int n) {
  for (int c = 0; c < n / 4; ++c) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t x;
    std::memcpy(&x, src + 8 * c, 8);
    x = (x >> sh) & 0x0F0F0F0F0F0F0F0Full;
    x = (x | (x >> 4)) & 0x00FF00FF00FF00FFull;  // each 16-bit lane: b0 | b1 << 4
    x = (x | (x >> 8)) & 0x0000FFFF0000FFFFull;
    x = (x | (x >> 16)) & 0xFFFFFFFFull;
    const uint32_t y = uint32_t(x);
    std::memcpy(dst + 4 * c, &y, 4);
#else
    for (int p = 4 * c; p < 4 * c + 4; ++p)
      dst[p] = uint8_t(((src[2 * p] >> sh) & 15) | (((src[2 * p + 1] >> sh) & 15) << 4));
#endif
  }
}

// per sub-block t: scale, min, then 16 bytes of q[2p] | q[2p + 1] << 4
void image_q4k(const uint8_t* g, uint8_t* im) {
  const uint8_t *sd = g + 4, *sm = g + 8, *smd = g + 12;  // 6-bit scales and mins of 8 sub-blocks, in 12 bytes
  for (int t = 0; t < 8; ++t) {
    uint8_t* o = im + 18 * t;
    o[0] = uint8_t(t < 4 ? sd[t] & 0x3F : (smd[t - 4] & 0x0F) | ((sd[t - 4] >> 2) & 0x30));
    o[1] = uint8_t(t < 4 ? sm[t] & 0x3F : (smd[t - 4] >> 4) | ((sm[t - 4] >> 2) & 0x30));
    const uint8_t* q = g + 16 + 32 * (t / 2);  // sub-block t: the low (even t) or high (odd t) nibbles of 32 bytes
    pack_pairs(q, 4 * (t & 1), o + 2, 16);
  }
}

// per sub-block t of 16: scale, 8 low-nibble pairs, 4 bytes of four 2-bit highs. Element e = 128 r + 32 s + i has
// its low nibble in ql[64 r + 32 (s & 1) + i] (the high nibble when s >= 2), its high bits at 2 s of qh[32 r + i].
void image_q6k(const uint8_t* g, uint8_t* im) {
  for (int t = 0; t < 16; ++t) {
    const int r = t / 8, sh = (t % 8) / 2, i0 = 16 * (t & 1), ns = sh >= 2 ? 4 : 0, hs = 2 * sh;
    const uint8_t* lo = g + 64 * r + 32 * (sh & 1) + i0;
    const uint8_t* hi = g + 128 + 32 * r + i0;
    uint8_t* o = im + 13 * t;
    o[0] = g[192 + t];
    pack_pairs(lo, ns, o + 1, 8);
    for (int u = 0; u < 4; ++u) {  // four 2-bit fields of four bytes into one byte
      uint32_t x;
      std::memcpy(&x, hi + 4 * u, 4);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
      x = __builtin_bswap32(x);
#endif
      x = (x >> hs) & 0x03030303u;
      o[9 + u] = uint8_t(x | (x >> 6) | (x >> 12) | (x >> 18));
    }
  }
}

// 16 low-nibble pairs (elements 0..15 low nibbles, 16..31 high nibbles of bytes 6..21), then the 4 bytes of fifth bits
void image_q50(const uint8_t* g, uint8_t* im) {
  pack_pairs(g + 6, 0, im, 8);
  pack_pairs(g + 6, 4, im + 8, 8);
  std::copy(g + 2, g + 6, im + 16);  // bit i of byte o: the fifth bit of element 8 o + i, as GGUF stores it
}

void image_q80(const uint8_t* g, uint8_t* im) { std::copy(g + 2, g + 34, im); }

// rows[r * 16 + j] = im[j][r] for r < n: 16 lane images interleaved
void transpose(const uint8_t (*im)[MAX_IMAGE], int n, uint8_t* rows) {
  int r0 = 0;
#if defined(__SSE2__)
  for (; r0 + 16 <= n; r0 += 16) {  // 16 x 16 bytes: four rounds of interleaving row i with row i + 8
    __m128i v[16], w[16];
    for (int j = 0; j < 16; ++j) v[j] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(im[j] + r0));
    for (int round = 0; round < 4; ++round) {
      for (int i = 0; i < 8; ++i) {
        w[2 * i] = _mm_unpacklo_epi8(v[i], v[i + 8]);
        w[2 * i + 1] = _mm_unpackhi_epi8(v[i], v[i + 8]);
      }
      std::copy(w, w + 16, v);
    }
    for (int i = 0; i < 16; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(rows + (r0 + i) * 16), v[i]);
  }
#endif
  for (int r = r0; r < n; ++r)
    for (int j = 0; j < 16; ++j) rows[r * 16 + j] = im[j][r];
}

void image(int type, const uint8_t* g, uint8_t* im) {
  if (type == sv::Q4_K) image_q4k(g, im);
  else if (type == sv::Q6_K) image_q6k(g, im);
  else if (type == sv::Q5_0) image_q50(g, im);
  else image_q80(g, im);
}

// --- the int8 path's repacking (quant_int8.h): lane j's share of one GGUF block, written into super-group sg
void image8_q4k(const uint8_t* g, int j, uint8_t* sg) {
  std::copy(g, g + 2, sg + 2 * j);
  std::copy(g + 2, g + 4, sg + 32 + 2 * j);
  uint8_t im[8 * 18];
  image_q4k(g, im);  // its scales and mins, unpacked from 6 bits
  for (int t = 0; t < 8; ++t) {
    sg[64 + 16 * t + j] = im[18 * t];
    sg[192 + 16 * t + j] = im[18 * t + 1];
  }
  for (int P = 0; P < 4; ++P)
    for (int c = 0; c < 8; ++c) std::memcpy(sg + sv8::HDR + ((P * 8 + c) * 16 + j) * 4, g + 16 + 32 * P + 4 * c, 4);
}

void image8_q6k(const uint8_t* g, int j, uint8_t* sg) {
  std::copy(g + 208, g + 210, sg + 2 * j);
  for (int b = 0; b < 16; ++b) sg[64 + 16 * b + j] = g[192 + b];
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 8; ++c) {
      for (int h = 0; h < 2; ++h)
        std::memcpy(sg + sv8::HDR + (((r * 2 + h) * 8 + c) * 16 + j) * 4, g + 64 * r + 32 * h + 4 * c, 4);
      std::memcpy(sg + sv8::Q6K_QH + ((r * 8 + c) * 16 + j) * 4, g + 128 + 32 * r + 4 * c, 4);
    }
}

bool isa8_ok(int isa) {
  if (isa == ISA_PORTABLE) return true;
#if defined(__x86_64__) || defined(_M_X64)
  if (!isa_ok(isa)) return false;
  return isa == ISA_AVX2 || (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni"));
#else
  return false;
#endif
}

using Blocks8Fn = void (*)(const sv8::Job*, int64_t, int64_t);

Blocks8Fn blocks8_fn(int isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == ISA_AVX512) return sv8_blocks_avx512;
  if (isa == ISA_AVX2) return sv8_blocks_avx2;
#endif
  return sv8_blocks_portable;
}

}  // namespace

extern "C" {

int sv_abi() { return 3; }

int sv_isa_ok(int isa) { return isa_ok(isa) ? 1 : 0; }

// the best path this CPU has
int sv_best_isa() { return isa_ok(ISA_AVX512) ? ISA_AVX512 : isa_ok(ISA_AVX2) ? ISA_AVX2 : ISA_PORTABLE; }

// bytes of the repacked (N, K) weight of `type`; 0 when this kernel does not take it
int64_t sv_packed_bytes(int type, int64_t N, int64_t K) { return (N + sv::LANES - 1) / sv::LANES * sv::row_bytes(type, K); }

// raw: the GGUF tensor's bytes (N rows of K / block_k blocks); out: sv_packed_bytes(type, N, K) bytes; threads: 0
// for all of torch's, 1 for this thread only (a background load, beside a busy main thread). -> 0, or -1
int sv_repack(int type, const uint8_t* raw, int64_t N, int64_t K, uint8_t* out, int threads) {
  const int64_t rb = sv::row_bytes(type, K), gk = gguf_block_k(type), gb = gguf_block_bytes(type);
  if (!rb || !gb) return -1;
  const int64_t B = (N + sv::LANES - 1) / sv::LANES, groups = K / gk, row = groups * gb, sg = sv::group_bytes(type);
  const int halves = header_halves(type), ib = image_bytes(type);
  auto work = [&](int64_t lo, int64_t hi) {
    alignas(64) uint8_t im[sv::LANES][MAX_IMAGE];
    for (int64_t b = lo; b < hi; ++b) {
      const int lanes = int(std::min<int64_t>(sv::LANES, N - b * sv::LANES));
      if (lanes < sv::LANES) std::fill(&im[0][0], &im[0][0] + sizeof(im), 0);  // lanes past N: zero weights
      for (int64_t s = 0; s < groups; ++s) {
        uint8_t* o = out + b * rb + s * sg;
        std::fill(o, o + 32 * halves, 0);  // and zero scales
        for (int j = 0; j < lanes; ++j) {
          const uint8_t* g = raw + (b * sv::LANES + j) * row + s * gb;
          for (int h = 0; h < halves; ++h) std::copy(g + half_at(type, h), g + half_at(type, h) + 2, o + 32 * h + 2 * j);
          image(type, g, im[j]);
        }
        transpose(im, ib, o + 32 * halves);
      }
    }
  };
  if (threads == 1)
    work(0, B);
  else
    at::parallel_for(0, B, 8, work);
  return 0;
}

// y (M, N) = x (M, K) times the repacked weight w, plus bias (N values, or null), on path `isa`. -> 0, or -1
int sv_linear(int isa, int type, const float* x, int64_t M, const uint8_t* w, const float* bias, float* y, int64_t N,
              int64_t K) {
  if (!sv::row_bytes(type, K) || !isa_ok(isa)) return -1;
  const int64_t B = (N + sv::LANES - 1) / sv::LANES;
  const BlocksFn fn = blocks_fn(isa);
  // a long pass in sweeps of CHUNK_ROWS rows, each over every block: the same operations per output either way
  for (int64_t m0 = 0; m0 < M; m0 += CHUNK_ROWS) {
    sv::Job job{type, x + m0 * K, std::min(CHUNK_ROWS, M - m0), w, bias, y + m0 * N, N, K, nullptr};
    at::parallel_for(0, B, 4, [&](int64_t lo, int64_t hi) {
      sv::Job mine = job;
      mine.scratch = scratch(sv::scratch_floats(K, CHUNK_ROWS));
      fn(&mine, lo, hi);
    });
  }
  return 0;
}

// rows ids[0..n) of the repacked (N, K) weight, dequantised exactly: out (n, K). -> 0, or -1
int sv_rows(int type, const uint8_t* w, int64_t N, int64_t K, const int64_t* ids, int64_t n, float* out) {
  const int64_t rb = sv::row_bytes(type, K);
  if (!rb) return -1;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= N) return -1;
  at::parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      sv::dequant_lane(type, w + ids[i] / sv::LANES * rb, K, int(ids[i] % sv::LANES), out + i * K, 1);
  });
  return 0;
}

// --- the int8 path (quant_int8.h)

int sv8_isa_ok(int isa) { return isa8_ok(isa) ? 1 : 0; }

int sv8_best_isa() { return isa8_ok(ISA_AVX512) ? ISA_AVX512 : isa8_ok(ISA_AVX2) ? ISA_AVX2 : ISA_PORTABLE; }

int64_t sv8_packed_bytes(int type, int64_t N, int64_t K) { return (N + sv::LANES - 1) / sv::LANES * sv8::row_bytes(type, K); }

// raw: the GGUF tensor's bytes; out: sv8_packed_bytes(type, N, K) bytes; threads as for sv_repack. -> 0, or -1
int sv8_repack(int type, const uint8_t* raw, int64_t N, int64_t K, uint8_t* out, int threads) {
  const int64_t rb = sv8::row_bytes(type, K), gb = gguf_block_bytes(type);
  if (!rb) return -1;
  const int64_t B = (N + sv::LANES - 1) / sv::LANES, groups = K / 256, row = groups * gb, sg = sv8::group_bytes(type);
  auto work = [&](int64_t lo, int64_t hi) {
    std::fill(out + lo * rb, out + hi * rb, 0);  // lanes past N: zero scales and weights
    for (int64_t b = lo; b < hi; ++b) {
      const int lanes = int(std::min<int64_t>(sv::LANES, N - b * sv::LANES));
      for (int64_t s = 0; s < groups; ++s)
        for (int j = 0; j < lanes; ++j) {
          const uint8_t* g = raw + (b * sv::LANES + j) * row + s * gb;
          uint8_t* o = out + b * rb + s * sg;
          if (type == sv::Q4_K) image8_q4k(g, j, o);
          else image8_q6k(g, j, o);
        }
    }
  };
  if (threads == 1)
    work(0, B);
  else
    at::parallel_for(0, B, 8, work);
  return 0;
}

// y (M, N) = x (M, K) times the int8-layout weight w, plus bias, on path `isa`: each row of x quantised to 8 bits
// per 32 inputs first (the same for every path), then integer dots and quant_int8.h's epilogue. -> 0, or -1
int sv8_linear(int isa, int type, const float* x, int64_t M, const uint8_t* w, const float* bias, float* y, int64_t N,
               int64_t K) {
  if (!sv8::row_bytes(type, K) || !isa8_ok(isa)) return -1;
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xd;
  thread_local std::vector<int32_t> xs;
  xq.resize(M * K);
  xd.resize(M * K / 32);
  xs.resize(M * K / 16);
  int8_t* q = xq.data();
  float* d = xd.data();
  int32_t* s = xs.data();
  at::parallel_for(0, M, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t m = lo; m < hi; ++m) sv8::quantise_row(x + m * K, K, q + m * K, d + m * (K / 32), s + m * (K / 16));
  });
  const sv8::Job job{type, q, d, s, M, w, bias, y, N, K};
  const Blocks8Fn fn = blocks8_fn(isa);
  at::parallel_for(0, (N + sv::LANES - 1) / sv::LANES, 4, [&](int64_t lo, int64_t hi) { fn(&job, lo, hi); });
  return 0;
}

// rows ids[0..n) of the int8-layout (N, K) weight, dequantised exactly: out (n, K). -> 0, or -1
int sv8_rows(int type, const uint8_t* w, int64_t N, int64_t K, const int64_t* ids, int64_t n, float* out) {
  const int64_t rb = sv8::row_bytes(type, K);
  if (!rb) return -1;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= N) return -1;
  at::parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      sv8::dequant_lane(type, w + ids[i] / sv::LANES * rb, K, int(ids[i] % sv::LANES), out + i * K);
  });
  return 0;
}

}  // extern "C"
