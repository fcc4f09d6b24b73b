// The quantised kernel's vector algorithm, written once over a vector type V (AVX2: 8 lanes, AVX-512: 16) and
// included by each ISA's translation unit after its `#pragma GCC target`, inside an anonymous namespace there (so the
// two instantiations never merge at link time). V provides: W (lanes), F / I (float / int32 vectors), zero, bcast,
// fma, mul, sub, cvt (int32 -> float), nibble (the low 4 bits of each lane as a float, exactly cvt's value), u8 / i8
// (W bytes widened to int32), f16 (W halves to float), band / bor / sll / srl / isub (with an int constant), load,
// store.
//
// A weight vector (W lanes of one k) is formed in registers exactly as quant_common.h's dequant_block forms it, then
// each of up to MAX_FUSED rows accumulates it with one FMA, k in order: the float32 kernel's operations, bit for bit.
// Longer passes dequantise panels of the weights once into scratch and run float tiles of TILE rows x TILE_UNITS
// vectors over them: the same operations again, so a row's result does not depend on how many rows share the pass.

#define SV_INLINE __attribute__((always_inline)) inline
#define SV_LAMBDA __attribute__((always_inline))

// The weight vectors of U units (a unit: lanes l0[u] .. l0[u]+W-1 of the block at p[u]), k in order for each unit:
// emit(k, u, w). Units are decoded in lockstep, so that a one-row pass has U independent FMA chains in flight (one
// chain is bound by the FMA's latency); each unit's own operations and their order are the same for any U.
template <class V, int U, class Emit>
SV_INLINE void decode_q4k(const uint8_t* const* p, const int* l0, int64_t K, Emit&& emit) {
  using F = typename V::F;
  for (int64_t s = 0; s < K / 256; ++s) {
    F d[U], dm[U];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      d[u] = V::f16(p[u] + s * sv::Q4K_SG + 2 * l0[u]);
      dm[u] = V::f16(p[u] + s * sv::Q4K_SG + 32 + 2 * l0[u]);
    }
    for (int t = 0; t < 8; ++t) {
      F sc[U], mn[U];
      const uint8_t* q[U];
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        const uint8_t* sub = p[u] + s * sv::Q4K_SG + 64 + t * sv::Q4K_SUB;
        sc[u] = V::mul(d[u], V::cvt(V::u8(sub + l0[u])));
        mn[u] = V::mul(dm[u], V::cvt(V::u8(sub + 16 + l0[u])));
        q[u] = sub + 32 + l0[u];
      }
      const int64_t k0 = s * 256 + t * 32;
#pragma GCC unroll 4
      for (int pp = 0; pp < 16; ++pp) {
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) {
          const typename V::I b = V::u8(q[u] + 16 * pp);
          emit(k0 + 2 * pp, u, V::sub(V::mul(sc[u], V::nibble(b)), mn[u]));
          emit(k0 + 2 * pp + 1, u, V::sub(V::mul(sc[u], V::nibble(V::srl(b, 4))), mn[u]));
        }
      }
    }
  }
}

template <class V, int U, class Emit>
SV_INLINE void decode_q6k(const uint8_t* const* p, const int* l0, int64_t K, Emit&& emit) {
  using F = typename V::F;
  using I = typename V::I;
  for (int64_t s = 0; s < K / 256; ++s) {
    F d[U];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) d[u] = V::f16(p[u] + s * sv::Q6K_SG + 2 * l0[u]);
    for (int t = 0; t < 16; ++t) {
      F sc[U];
      const uint8_t* sub[U];
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        sub[u] = p[u] + s * sv::Q6K_SG + 32 + t * sv::Q6K_SUB + l0[u];
        sc[u] = V::mul(d[u], V::cvt(V::i8(sub[u])));
      }
      const int64_t k0 = s * 256 + t * 16;
#pragma GCC unroll 4
      for (int w = 0; w < 4; ++w) {
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) {
          const I h = V::u8(sub[u] + 144 + 16 * w);
          const I a = V::u8(sub[u] + 16 + 32 * w), b = V::u8(sub[u] + 32 + 32 * w);
          const I q0 = V::bor(V::band(a, 15), V::band(V::sll(h, 4), 0x30));
          const I q1 = V::bor(V::srl(a, 4), V::band(V::sll(h, 2), 0x30));
          const I q2 = V::bor(V::band(b, 15), V::band(h, 0x30));
          const I q3 = V::bor(V::srl(b, 4), V::band(V::srl(h, 2), 0x30));
          emit(k0 + 4 * w, u, V::mul(sc[u], V::cvt(V::isub(q0, 32))));
          emit(k0 + 4 * w + 1, u, V::mul(sc[u], V::cvt(V::isub(q1, 32))));
          emit(k0 + 4 * w + 2, u, V::mul(sc[u], V::cvt(V::isub(q2, 32))));
          emit(k0 + 4 * w + 3, u, V::mul(sc[u], V::cvt(V::isub(q3, 32))));
        }
      }
    }
  }
}

// bit i of h moved to bit 4 (the fifth bit of a Q5_0 value), the rest cleared
template <class V>
SV_INLINE typename V::I fifth(typename V::I h, int i) {
  return V::band(i < 4 ? V::sll(h, 4 - i) : i > 4 ? V::srl(h, i - 4) : h, 0x10);
}

template <class V, int U, class Emit>
SV_INLINE void decode_q50(const uint8_t* const* p, const int* l0, int64_t K, Emit&& emit) {
  using F = typename V::F;
  using I = typename V::I;
  for (int64_t s = 0; s < K / 32; ++s) {
    F d[U];
    const uint8_t* g[U];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      g[u] = p[u] + s * sv::Q50_SG + l0[u];
      d[u] = V::f16(p[u] + s * sv::Q50_SG + 2 * l0[u]);
    }
#pragma GCC unroll 4
    for (int o = 0; o < 4; ++o) {
#pragma GCC unroll 4
      for (int pp = 0; pp < 4; ++pp) {
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) {
          const I h = V::u8(g[u] + 288 + 16 * o);
          const I b = V::u8(g[u] + 32 + 16 * (4 * o + pp));
          const I q0 = V::bor(V::band(b, 15), fifth<V>(h, 2 * pp));
          const I q1 = V::bor(V::srl(b, 4), fifth<V>(h, 2 * pp + 1));
          emit(s * 32 + 8 * o + 2 * pp, u, V::mul(d[u], V::cvt(V::isub(q0, 16))));
          emit(s * 32 + 8 * o + 2 * pp + 1, u, V::mul(d[u], V::cvt(V::isub(q1, 16))));
        }
      }
    }
  }
}

template <class V, int U, class Emit>
SV_INLINE void decode_q80(const uint8_t* const* p, const int* l0, int64_t K, Emit&& emit) {
  using F = typename V::F;
  for (int64_t s = 0; s < K / 32; ++s) {
    F d[U];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) d[u] = V::f16(p[u] + s * sv::Q80_SG + 2 * l0[u]);
#pragma GCC unroll 8
    for (int r = 0; r < 32; ++r) {
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u)
        emit(s * 32 + r, u, V::mul(V::cvt(V::i8(p[u] + s * sv::Q80_SG + 32 + 16 * r + l0[u])), d[u]));
    }
  }
}

template <class V, int T, int U, class Emit>
SV_INLINE void decode(const uint8_t* const* p, const int* l0, int64_t K, Emit&& emit) {
  if constexpr (T == sv::Q4_K) decode_q4k<V, U>(p, l0, K, emit);
  if constexpr (T == sv::Q6_K) decode_q6k<V, U>(p, l0, K, emit);
  if constexpr (T == sv::Q5_0) decode_q50<V, U>(p, l0, K, emit);
  if constexpr (T == sv::Q8_0) decode_q80<V, U>(p, l0, K, emit);
}

// M rows x U units, weights formed in registers: out[u][m * 16 + l0[u] + j]
template <class V, int T, int M, int U>
void fused(const float* x, int64_t ldx, const uint8_t* const* p, const int* l0, int64_t K, float* const* out) {
  typename V::F acc[U][M];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[u][m] = V::zero();
  decode<V, T, U>(p, l0, K, [&](int64_t k, int u, typename V::F w) SV_LAMBDA {
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) acc[u][m] = V::fma(V::bcast(x + m * ldx + k), w, acc[u][m]);
  });
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) V::store(out[u] + m * sv::LANES + l0[u], acc[u][m]);
}

// the block's lanes l0.. dequantised: scratch[k * W + j]
template <class V, int T>
void to_scratch(const uint8_t* blk, int64_t K, int l0, float* scratch) {
  decode<V, T, 1>(&blk, &l0, K, [&](int64_t k, int, typename V::F w) SV_LAMBDA { V::store(scratch + k * V::W, w); });
}

// R rows x G units over one panel of kp inputs dequantised in scratch (unit g at w + g * kp * W, k * W + lane; x at
// the panel's first input, rows ldx apart), accumulating into acc (row m, unit g at (m * G + g) * W; zero first when
// `first`): per k, G weight loads and R broadcasts feed G * R FMAs. A float stored between panels and loaded again
// is the same float, so each output still takes one FMA per k, in order from 0.
template <class V, int R, int G>
void tile(const float* x, int64_t ldx, const float* w, int64_t kp, float* acc, bool first) {
  typename V::F a[G][R];
#pragma GCC unroll 8
  for (int m = 0; m < R; ++m)
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) a[g][m] = first ? V::zero() : V::load(acc + (m * G + g) * V::W);
  for (int64_t k = 0; k < kp; ++k) {
    typename V::F wv[G];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) wv[g] = V::load(w + g * kp * V::W + k * V::W);
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m) {
      const typename V::F xb = V::bcast(x + m * ldx + k);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) a[g][m] = V::fma(xb, wv[g], a[g][m]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < R; ++m)
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) V::store(acc + (m * G + g) * V::W, a[g][m]);
}

using FusedFn = void (*)(const float*, int64_t, const uint8_t* const*, const int*, int64_t, float* const*);
using TileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, bool);

template <class V, int T, int U, int... Ms>
constexpr FusedFn fused_table(int m, std::integer_sequence<int, Ms...>) {
  FusedFn fns[] = {nullptr, fused<V, T, Ms + 1, U>...};
  return fns[m];
}
template <class V, int G, int... Ms>
constexpr TileFn tile_table(int m, std::integer_sequence<int, Ms...>) {
  TileFn fns[] = {nullptr, tile<V, Ms + 1, G>...};
  return fns[m];
}

// acc (M rows, `stride` floats apart: W lanes of block b from lane l0) + bias into y
inline void write_unit(const sv::Job& j, int64_t b, int l0, int W, const float* acc, int64_t stride) {
  const int64_t n0 = b * sv::LANES + l0, width = j.N - n0 < W ? j.N - n0 : W;
  for (int64_t r = 0; r < j.M; ++r) {
    float* y = j.y + r * j.N + n0;
    const float* o = acc + r * stride;
    for (int64_t c = 0; c < width; ++c) y[c] = j.bias ? o[c] + j.bias[n0 + c] : o[c];
  }
}

// out (rows m0.., 16 lanes) + bias into y for block b
inline void write_out(const sv::Job& j, int64_t b, int64_t m0, int64_t m, const float* out) {
  const int64_t n0 = b * sv::LANES, width = j.N - n0 < sv::LANES ? j.N - n0 : sv::LANES;
  for (int64_t r = 0; r < m; ++r) {
    float* y = j.y + (m0 + r) * j.N + n0;
    const float* o = out + r * sv::LANES;
    for (int64_t c = 0; c < width; ++c) y[c] = j.bias ? o[c] + j.bias[n0 + c] : o[c];
  }
}

template <class V, int T>
void blocks_of(const sv::Job& j, int64_t lo, int64_t hi) {
  constexpr int MAX_FUSED = V::MAX_FUSED, TILE = V::TILE, HALVES = sv::LANES / V::W, UNITS = 4;
  const int64_t K = j.K, M = j.M, rb = sv::row_bytes(T, K);
  if (M <= MAX_FUSED) {  // units (a block's lanes, W at a time) in lockstep: 4 for one row, 2 for up to 4, else 1
    alignas(64) float out[UNITS][MAX_FUSED * sv::LANES];  // per block of a group; a block's halves share one
    const int per = M == 1 ? UNITS : M <= 4 ? 2 : 1;
    const int64_t units = (hi - lo) * HALVES;
    for (int64_t u0 = 0; u0 < units;) {
      const int n = units - u0 >= per ? per : 1;
      const uint8_t* p[UNITS];
      int l0[UNITS];
      float* o[UNITS];
      for (int u = 0; u < n; ++u) {
        const int64_t b = lo + (u0 + u) / HALVES;
        p[u] = j.w + b * rb;
        l0[u] = int((u0 + u) % HALVES) * V::W;
        o[u] = out[(u0 + u) / HALVES - u0 / HALVES];
      }
      // (4 units only ever run one row, 2 at most 4 rows: only those are compiled)
      if (n == 4) fused_table<V, T, 4>(int(M), std::make_integer_sequence<int, 1>())(j.x, K, p, l0, K, o);
      else if (n == 2) fused_table<V, T, 2>(int(M), std::make_integer_sequence<int, 4>())(j.x, K, p, l0, K, o);
      else fused_table<V, T, 1>(int(M), std::make_integer_sequence<int, MAX_FUSED>())(j.x, K, p, l0, K, o);
      // blocks whose last half is done are written out
      for (int u = 0; u < n; ++u)
        if ((u0 + u) % HALVES == HALVES - 1) write_out(j, lo + (u0 + u) / HALVES, 0, M, o[u]);
      u0 += n;
    }
    return;
  }
  // many rows: G units at a time (G blocks on AVX-512, G halves on AVX2), in panels of PANEL_K inputs: each panel of
  // the units dequantised once into scratch (kept in cache), then tiles of TILE rows x G units over it
  constexpr int G = V::TILE_UNITS;
  const int64_t gk = sv::group_k(T), kp_max = sv::PANEL_K / gk * gk;
  float* panel = j.scratch;                      // G units x kp_max inputs x W lanes
  float* acc = j.scratch + G * kp_max * V::W;    // M rows x G units x W lanes
  const int64_t units = (hi - lo) * HALVES;
  for (int64_t u0 = 0; u0 < units;) {
    const int n = units - u0 >= G ? G : 1;  // a last few units, one at a time
    for (int64_t k0 = 0; k0 < K; k0 += kp_max) {
      const int64_t kp = K - k0 < kp_max ? K - k0 : kp_max;
      for (int u = 0; u < n; ++u) {
        const uint8_t* blk = j.w + (lo + (u0 + u) / HALVES) * rb + k0 / gk * sv::group_bytes(T);
        to_scratch<V, T>(blk, kp, int((u0 + u) % HALVES) * V::W, panel + u * kp * V::W);
      }
      for (int64_t m0 = 0; m0 < M; m0 += TILE) {
        const int m = int(M - m0 < TILE ? M - m0 : TILE);
        const TileFn fn = n == G ? tile_table<V, G>(m, std::make_integer_sequence<int, TILE>())
                                 : tile_table<V, 1>(m, std::make_integer_sequence<int, TILE>());
        fn(j.x + m0 * K + k0, K, panel, kp, acc + m0 * n * V::W, k0 == 0);
      }
    }
    for (int u = 0; u < n; ++u)
      write_unit(j, lo + (u0 + u) / HALVES, int((u0 + u) % HALVES) * V::W, V::W, acc + u * V::W, n * V::W);
    u0 += n;
  }
}

void run_blocks(const sv::Job* j, int64_t lo, int64_t hi) {
  switch (j->type) {
    case sv::Q4_K: blocks_of<Vec, sv::Q4_K>(*j, lo, hi); break;
    case sv::Q6_K: blocks_of<Vec, sv::Q6_K>(*j, lo, hi); break;
    case sv::Q5_0: blocks_of<Vec, sv::Q5_0>(*j, lo, hi); break;
    case sv::Q8_0: blocks_of<Vec, sv::Q8_0>(*j, lo, hi); break;
    default: break;
  }
}
