// The int8 path's vector algorithm, written once over a vector type V (AVX2: 8 lanes, AVX-512 VNNI: 16) and included
// by each ISA's translation unit after its `#pragma GCC target`, inside an anonymous namespace there. V provides: W,
// RMAX (rows per tile), I / F (int32 / float vectors), izero, fzero, load (W dwords), mask (bytes & a constant), srl /
// sll (16-bit shifts), bor, isub (minus an int), bcast (four int8 inputs to every dword), dot (acc += four u8 x s8
// products per dword), cvt, f16, u8f / i8f (W bytes to floats), set1, mul, sub, fma, store.
//
// Per tile of up to RMAX rows and W lanes of a block: each 64-byte row of weight integers is loaded and unpacked once
// and dotted with every row's inputs; each sub-block's integer sums then take quant_int8.h's float epilogue in its
// canonical order, the same operations as the portable path, lane by lane.

#define SV8_INLINE __attribute__((always_inline)) inline

template <class V, int R>
SV8_INLINE void write_rows(const sv8::Job& jb, int64_t n0, int64_t m0, const typename V::F* acc) {
  alignas(64) float out[V::W];
  const int64_t width = jb.N - n0 < V::W ? jb.N - n0 : V::W;
  for (int m = 0; m < R; ++m) {
    V::store(out, acc[m]);
    float* y = jb.y + (m0 + m) * jb.N + n0;
    for (int64_t c = 0; c < width; ++c) y[c] = jb.bias ? out[c] + jb.bias[n0 + c] : out[c];
  }
}

// rows m0 .. m0 + R of lanes l0 .. l0 + W of block b
template <class V, int R>
void q4k_unit(const sv8::Job& jb, int64_t b, int l0, int64_t m0) {
  using F = typename V::F;
  using I = typename V::I;
  const int64_t K = jb.K;
  const uint8_t* blk = jb.w + b * sv8::row_bytes(sv::Q4_K, K);
  F acc[R];
  for (int m = 0; m < R; ++m) acc[m] = V::fzero();
  for (int64_t s = 0; s < K / 256; ++s) {
    const uint8_t* sg = blk + s * sv8::Q4K_SG;
    const int64_t k0 = s * 256;
    const F d = V::f16(sg + 2 * l0), dm = V::f16(sg + 32 + 2 * l0);
    constexpr int E = R <= 2 ? 2 : 1;  // few rows: even and odd c apart, two dependency chains each
    for (int P = 0; P < 4; ++P) {
      I lo[E][R], hi[E][R];
      for (int e = 0; e < E; ++e)
        for (int m = 0; m < R; ++m) lo[e][m] = hi[e][m] = V::izero();
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        const I v = V::load(sg + sv8::HDR + ((P * 8 + c) * 16 + l0) * 4);
        const I wl = V::mask(v, 0x0F), wh = V::mask(V::srl(v, 4), 0x0F);
#pragma GCC unroll 8
        for (int m = 0; m < R; ++m) {
          const int8_t* xq = jb.xq + (m0 + m) * K + k0 + 64 * P + 4 * c;
          lo[c % E][m] = V::dot(lo[c % E][m], wl, V::bcast(xq));
          hi[c % E][m] = V::dot(hi[c % E][m], wh, V::bcast(xq + 32));
        }
      }
      for (int h = 0; h < 2; ++h) {
        const int t = 2 * P + h;
        const F dsc = V::mul(d, V::u8f(sg + 64 + 16 * t + l0)), dmn = V::mul(dm, V::u8f(sg + 192 + 16 * t + l0));
#pragma GCC unroll 8
        for (int m = 0; m < R; ++m) {
          I dot = h ? hi[0][m] : lo[0][m];
          if constexpr (E == 2) dot = V::iadd(dot, h ? hi[1][m] : lo[1][m]);
          const int32_t* xs = jb.xs + (m0 + m) * (K / 16) + (k0 + 32 * t) / 16;
          const F e = V::sub(V::mul(dsc, V::cvt(dot)), V::mul(dmn, V::set1(float(xs[0] + xs[1]))));
          acc[m] = V::fma(V::set1(jb.xd[(m0 + m) * (K / 32) + (k0 + 32 * t) / 32]), e, acc[m]);
        }
      }
    }
  }
  write_rows<V, R>(jb, b * sv::LANES + l0, m0, acc);
}

// Q6_K's epilogue for s = q0 .. q0 + QG of one (r, half), in the canonical order
template <class V, int R, int QG>
SV8_INLINE void epilogue_q6k(const sv8::Job& jb, const uint8_t* sg, typename V::F d, int l0, int64_t m0, int64_t k0,
                             int r, int half, int q0, const typename V::I (&a)[QG][R], typename V::F* acc) {
  using F = typename V::F;
  const int64_t K = jb.K;
  for (int q = 0; q < QG; ++q) {
    const int sb = 8 * r + 2 * (q0 + q) + half;
    const F dsc = V::mul(d, V::i8f(sg + 64 + 16 * sb + l0));
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m) {
      const int32_t xs = jb.xs[(m0 + m) * (K / 16) + (k0 + 16 * sb) / 16];
      const F dot = V::cvt(V::isub(a[q][m], 32 * xs));
      acc[m] = V::fma(V::set1(jb.xd[(m0 + m) * (K / 32) + (k0 + 16 * sb) / 32]), V::mul(dsc, dot), acc[m]);
    }
  }
}

template <class V, int R>
void q6k_unit(const sv8::Job& jb, int64_t b, int l0, int64_t m0) {
  using F = typename V::F;
  using I = typename V::I;
  const int64_t K = jb.K;
  const uint8_t* blk = jb.w + b * sv8::row_bytes(sv::Q6_K, K);
  F acc[R];
  for (int m = 0; m < R; ++m) acc[m] = V::fzero();
  for (int64_t s = 0; s < K / 256; ++s) {
    const uint8_t* sg = blk + s * sv8::Q6K_SG;
    const int64_t k0 = s * 256;
    const F d = V::f16(sg + 2 * l0);
    // many rows: the four s in two rounds of two, so the accumulators stay in registers (canonical order kept)
    constexpr int QG = R > 4 ? 2 : 4;
    for (int r = 0; r < 2; ++r)
      for (int half = 0; half < 2; ++half)
        for (int q0 = 0; q0 < 4; q0 += QG) {
          I a[QG][R];  // per s (inputs 32 s ..): sum of q * xq over this half's 16 inputs
          for (int q = 0; q < QG; ++q)
            for (int m = 0; m < R; ++m) a[q][m] = V::izero();
#pragma GCC unroll 4
          for (int c = 4 * half; c < 4 * half + 4; ++c) {
            const I l0v = V::load(sg + sv8::HDR + (((r * 2) * 8 + c) * 16 + l0) * 4);
            const I l1v = V::load(sg + sv8::HDR + (((r * 2 + 1) * 8 + c) * 16 + l0) * 4);
            const I hv = V::load(sg + sv8::Q6K_QH + ((r * 8 + c) * 16 + l0) * 4);
            I w[QG];
#pragma GCC unroll 4
            for (int q = 0; q < QG; ++q) {
              const int sq = q0 + q;
              const I lo = sq & 1 ? l1v : l0v;
              const I hb = sq == 0 ? V::sll(hv, 4) : sq == 1 ? V::sll(hv, 2) : sq == 2 ? hv : V::srl(hv, 2);
              w[q] = V::bor(V::mask(sq >= 2 ? V::srl(lo, 4) : lo, 0x0F), V::mask(hb, 0x30));
            }
#pragma GCC unroll 8
            for (int m = 0; m < R; ++m) {
              const int8_t* xq = jb.xq + (m0 + m) * K + k0 + 128 * r + 4 * c + 32 * q0;
#pragma GCC unroll 4
              for (int q = 0; q < QG; ++q) a[q][m] = V::dot(a[q][m], w[q], V::bcast(xq + 32 * q));
            }
          }
          epilogue_q6k<V, R, QG>(jb, sg, d, l0, m0, k0, r, half, q0, a, acc);
        }
  }
  write_rows<V, R>(jb, b * sv::LANES + l0, m0, acc);
}

using UnitFn = void (*)(const sv8::Job&, int64_t, int, int64_t);

template <class V, int T, int... Rs>
UnitFn unit_for(int m, std::integer_sequence<int, Rs...>) {
  UnitFn fns[] = {nullptr, (T == sv::Q4_K ? &q4k_unit<V, Rs + 1> : &q6k_unit<V, Rs + 1>)...};
  return fns[m];
}

void run_blocks8(const sv8::Job* jb, int64_t lo, int64_t hi) {
  constexpr int HALVES = int(sv::LANES) / Vec8::W;
  for (int64_t b = lo; b < hi; ++b)
    for (int h = 0; h < HALVES; ++h)
      for (int64_t m0 = 0; m0 < jb->M; m0 += Vec8::RMAX) {
        const int m = int(jb->M - m0 < Vec8::RMAX ? jb->M - m0 : Vec8::RMAX);
        const UnitFn fn = jb->type == sv::Q4_K
                              ? unit_for<Vec8, sv::Q4_K>(m, std::make_integer_sequence<int, Vec8::RMAX>())
                              : unit_for<Vec8, sv::Q6_K>(m, std::make_integer_sequence<int, Vec8::RMAX>());
        fn(*jb, b, h * Vec8::W, m0);
      }
}
