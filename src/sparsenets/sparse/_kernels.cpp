// sparsenets native CSR kernels (CPU, OpenMP, GCC/Clang vector extensions). Built on first use
// by sparsenets/sparse/kernels.py with the host's compiler (-O3 -march=native -fopenmp) and
// called through ctypes: plain C ABI, raw pointers, no torch headers, so the build takes a
// few seconds.
//
// Every kernel exists in two vector widths, chosen at run time by the caller: W = 64 bytes
// (AVX-512: 16 floats a register, 32 registers) and W = 32 bytes (AVX2: 8 floats, 16
// registers); a narrow one, W = 16 bytes (4 floats), serves no-grad batches of 2-4, which the
// wide paths would pad to 8 or 16 lanes. All are compiled on every machine; on a CPU without
// AVX-512 the compiler splits a 64-byte vector into two 32-byte halves, so the wide path stays
// correct there (and is tested there) but the caller picks it only where the CPU has the
// registers.
//
// The batch dimension is the vector dimension. An activation X (N, C) is first packed
// feature-major: xt (C, ld), ld = N rounded up to the vector width, pad columns zero, cut into
// panels of `tile` batch columns (see Panels) that the caller sizes to the L2 cache. Then
//
//   spmm  : Y(n, i) = act(bias[i] + sum_{k in row i} v[k] * xt[col[k], n])   (forward, grad-input)
//           one nonzero = one broadcast-FMA over a contiguous run of the batch, with several
//           nonzeros in flight on separate accumulators; the result is accumulated for a group
//           of output rows (one cache line of Y) and a panel, then written out row-major (N, R)
//           with the optional ReLU applied, so no transposed view is ever handed on.
//   sddmm : out[k] = sum_n at[row(k), n] * bt[col[k], n]                      (grad-values)
//           dot products of contiguous rows, eight nonzeros at a time, reduced together.
//   pack  : xt = X^T with zero padding, any input strides, optional per-feature sums (the bias
//           gradient comes out of packing grad_out) and an optional gate: X[n, c] is taken as
//           0 where gate[n, c] <= 0 (the backward of a fused ReLU, gate = its output).
//
// Every sum runs over the same terms as the dense masked computation, in another order:
// results agree with dense math to rounding (fp32 ~1e-6 relative).

#include <algorithm>
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

// Below this many multiply-adds (or copied values) a call runs on the calling thread: waking
// the pool costs more than it saves.
constexpr int64_t kParallelWork = 1 << 15;
constexpr int64_t kMaxTile = 256;  // widest panel, in batch columns

template <typename T, int W>
struct Vec {
    static constexpr int L = W / sizeof(T);
    typedef T type __attribute__((vector_size(W)));
};

template <typename T, int W>
inline typename Vec<T, W>::type vload(const T* p) {
    typename Vec<T, W>::type r;
    std::memcpy(&r, p, sizeof(r));
    return r;
}

template <typename T, int W>
inline void vstore(T* p, typename Vec<T, W>::type x) {
    std::memcpy(p, &x, sizeof(x));
}

template <typename T, int W>
inline T hsum(typename Vec<T, W>::type x) {
    T s = 0;
    for (int q = 0; q < Vec<T, W>::L; ++q) s += x[q];
    return s;
}

// The two halves of a vector added: a W-byte vector folded to W/2 bytes.
template <typename T, int W>
inline typename Vec<T, W / 2>::type fold(typename Vec<T, W>::type x) {
    typename Vec<T, W / 2>::type lo, hi;
    std::memcpy(&lo, &x, W / 2);
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + W / 2, W / 2);
    return lo + hi;
}

// r[j] = sum of the lanes of s[j], j < 8 (the eight dot products of one sddmm group).
template <typename T, int W>
inline void reduce8(const typename Vec<T, W>::type* s, T* r) {
    for (int j = 0; j < 8; ++j) r[j] = hsum<T, W>(s[j]);
}

#if defined(__AVX__)
// Eight 8-float sums at once: a tree of horizontal adds instead of eight lane-by-lane sums.
inline __m256 reduce8_m256(const __m256* a) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]),
                 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

template <>
inline void reduce8<float, 32>(const Vec<float, 32>::type* s, float* r) {
    __m256 a[8];
    std::memcpy(a, s, sizeof(a));
    _mm256_storeu_ps(r, reduce8_m256(a));
}

#if defined(__AVX512F__)
template <>
inline void reduce8<float, 64>(const Vec<float, 64>::type* s, float* r) {
    __m256 a[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {  // fold in registers: the two 256-bit halves added
        const __m512 v = reinterpret_cast<const __m512&>(s[j]);
        a[j] = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    }
    _mm256_storeu_ps(r, reduce8_m256(a));
}
#endif
#endif

// dst[c*ds + r] = src[r*ss + c] for r < nr, c < nc (a small block, both sides cache-resident).
template <typename T>
inline void transpose_scalar(const T* src, int64_t ss, T* dst, int64_t ds, int64_t nr, int64_t nc) {
    for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < nc; ++c) dst[c * ds + r] = src[r * ss + c];
}

// Register tiles of transposition: 8 x 8 floats or 4 x 4 doubles (TL x TL).
template <typename T>
struct Tile {
    static constexpr int TL = 32 / sizeof(T);
};

#if defined(__AVX__)
inline void transpose_tile(const float* s, int64_t ss, float* d, int64_t ds) {  // 8 x 8
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ss), r2 = _mm256_loadu_ps(s + 2 * ss),
           r3 = _mm256_loadu_ps(s + 3 * ss), r4 = _mm256_loadu_ps(s + 4 * ss), r5 = _mm256_loadu_ps(s + 5 * ss),
           r6 = _mm256_loadu_ps(s + 6 * ss), r7 = _mm256_loadu_ps(s + 7 * ss);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}

inline void transpose_tile(const double* s, int64_t ss, double* d, int64_t ds) {  // 4 x 4
    __m256d r0 = _mm256_loadu_pd(s), r1 = _mm256_loadu_pd(s + ss), r2 = _mm256_loadu_pd(s + 2 * ss),
            r3 = _mm256_loadu_pd(s + 3 * ss);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1), t2 = _mm256_unpacklo_pd(r2, r3),
            t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(d, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(d + ds, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(d + 2 * ds, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(d + 3 * ds, _mm256_permute2f128_pd(t1, t3, 0x31));
}
#else
template <typename T>
inline void transpose_tile(const T* s, int64_t ss, T* d, int64_t ds) {
    transpose_scalar<T>(s, ss, d, ds, Tile<T>::TL, Tile<T>::TL);
}
#endif

// dst[c*ds + r] = src[r*ss + c] for r < nr, c < nc, in register tiles.
template <typename T>
inline void transpose_block(const T* src, int64_t ss, T* dst, int64_t ds, int64_t nr, int64_t nc) {
    constexpr int L = Tile<T>::TL;
    const int64_t fr = nr - nr % L, fc = nc - nc % L;
    // r innermost: consecutive tiles fill the same destination lines, which matters when the
    // destination stride is a large power of two (those lines compete for one cache set).
    for (int64_t c = 0; c < fc; c += L)
        for (int64_t r = 0; r < fr; r += L) transpose_tile(src + r * ss + c, ss, dst + c * ds + r, ds);
    if (fc < nc) transpose_scalar<T>(src + fc, ss, dst + fc * ds, ds, nr, nc - fc);
    if (fr < nr) transpose_scalar<T>(src + fr * ss, ss, dst + fr, ds, nr - fr, fc);
}

// out[0:NV*L] = (first ? init : out) + sum_k v[k] * xt[col[k]*ld + off : +NV*L].
// S accumulator sets take consecutive nonzeros in turn, so that at least eight independent
// FMA chains are in flight even when a panel is only a few vectors wide (the FMA latency is
// four cycles, two issue per cycle); the sets are added at the end.
template <typename T, int W, typename I, int NV>
inline void row_block(const I* col, const T* vals, int64_t k0, int64_t k1, const T* xt, int64_t ld,
                      int64_t off, T init, bool first, T* out) {
    typedef typename Vec<T, W>::type vt;
    constexpr int L = Vec<T, W>::L;
    constexpr int S = NV >= 8 ? 1 : 8 / NV;
    vt acc[S][NV];
    for (int q = 0; q < NV; ++q) acc[0][q] = first ? vt{} + init : vload<T, W>(out + q * L);
    for (int s = 1; s < S; ++s)
        for (int q = 0; q < NV; ++q) acc[s][q] = vt{};
    int64_t k = k0;
    for (; k + S <= k1; k += S) {
#pragma GCC unroll 8
        for (int s = 0; s < S; ++s) {
            const T v = vals[k + s];
            const T* p = xt + static_cast<int64_t>(col[k + s]) * ld + off;
#pragma GCC unroll 8
            for (int q = 0; q < NV; ++q) acc[s][q] += v * vload<T, W>(p + q * L);
        }
    }
    for (; k < k1; ++k) {
        const T v = vals[k];
        const T* p = xt + static_cast<int64_t>(col[k]) * ld + off;
        for (int q = 0; q < NV; ++q) acc[0][q] += v * vload<T, W>(p + q * L);
    }
    for (int s = 1; s < S; ++s)
        for (int q = 0; q < NV; ++q) acc[0][q] += acc[s][q];
    for (int q = 0; q < NV; ++q) vstore<T, W>(out + q * L, acc[0][q]);
}

// Nonzeros [k0, k1) of one output row over batch columns [0, w), w a multiple of L.
template <typename T, int W, typename I>
inline void row_blocks(const I* col, const T* vals, int64_t k0, int64_t k1, const T* xt, int64_t ld,
                       int64_t w, T init, bool first, T* out) {
    constexpr int L = Vec<T, W>::L;
    int64_t o = 0;
    for (; o + 8 * L <= w; o += 8 * L) row_block<T, W, I, 8>(col, vals, k0, k1, xt, ld, o, init, first, out + o);
    if (o + 4 * L <= w) { row_block<T, W, I, 4>(col, vals, k0, k1, xt, ld, o, init, first, out + o); o += 4 * L; }
    if (o + 2 * L <= w) { row_block<T, W, I, 2>(col, vals, k0, k1, xt, ld, o, init, first, out + o); o += 2 * L; }
    if (o + L <= w) { row_block<T, W, I, 1>(col, vals, k0, k1, xt, ld, o, init, first, out + o); o += L; }
}

// One output row. With a permutation (grad-input through the CSR of W^T), the row's values are
// first gathered into a local buffer, so each is fetched once rather than once per block.
template <typename T, int W, typename I, bool P>
inline void row_compute(const I* col, const T* vals, const int64_t* perm, int64_t k0, int64_t k1,
                        const T* xt, int64_t ld, int64_t w, T init, T* out) {
    if (!P) {
        row_blocks<T, W, I>(col, vals, k0, k1, xt, ld, w, init, true, out);
        return;
    }
    constexpr int64_t KB = 512;
    T vb[KB];
    if (k0 == k1) row_blocks<T, W, I>(col, vb, 0, 0, xt, ld, w, init, true, out);
    for (int64_t kc = k0; kc < k1; kc += KB) {
        const int64_t ke = std::min<int64_t>(k1, kc + KB);
        for (int64_t k = kc; k < ke; ++k) vb[k - kc] = vals[perm[k]];
        row_blocks<T, W, I>(col + kc, vb, 0, ke - kc, xt, ld, w, init, kc == k0, out);
    }
}

// Packed ("panel") layout of an activation X (N, C): the batch is padded to ld (a multiple of
// the vector width L) and cut into panels of T columns (T a multiple of L; the last panel may be
// narrower); panel p holds X[pT : pT + w_p, :] transposed, C rows of w_p contiguous values, at
// offset C * p * T. With T >= ld this is the plain transpose (C, ld). A panel is what one kernel
// pass reads at random rows, so the caller sizes it to the L2 cache; a column slab of a
// row-major (C, ld) array would instead have a power-of-two stride and use a fraction of the
// cache sets.
struct Panels {
    int64_t C, ld, tw;  // rows, padded batch, panel width
    int64_t count() const { return (ld + tw - 1) / tw; }
    int64_t width(int64_t p) const { return std::min<int64_t>(tw, ld - p * tw); }
    int64_t offset(int64_t p) const { return C * p * tw; }
};

template <typename T, int W>
inline int64_t clamp_panel(int64_t t) {
    constexpr int64_t L = Vec<T, W>::L;
    return std::max<int64_t>(L, std::min<int64_t>(kMaxTile, t - t % L));
}

// Tasks are (panel, group of G output rows), panel-major, so that at any time the threads read
// the same panel of xt, which stays in cache while every row group uses it; one task
// accumulates G x w outputs in a small buffer and writes them out transposed into Y (N, R),
// through max(0, .) when relu is set.
template <typename T, int W, typename I, bool P>
void spmm(int64_t R, const I* crow, const I* col, const T* vals, const int64_t* perm, const T* bias,
          const T* xp, int64_t C, int64_t ld, int64_t tile, int64_t N, T* Y, int64_t ys, bool relu, int nt) {
    constexpr int G = 128 / sizeof(T);  // output rows per task: 128 bytes of each Y row
    const Panels pan{C, ld, clamp_panel<T, W>(tile)};
    const int64_t ngroups = (R + G - 1) / G, npanels = N > 0 ? pan.count() : 0;
    const int64_t ntasks = ngroups * npanels;
    const bool par = nt > 1 && (static_cast<int64_t>(crow[R]) + R) * ld >= kParallelWork;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (par)
    for (int64_t task = 0; task < ntasks; ++task) {
        alignas(64) T buf[G * kMaxTile];
        const int64_t g = task % ngroups, p = task / ngroups;
        const int64_t i0 = g * G, i1 = std::min<int64_t>(R, i0 + G);
        const int64_t w = pan.width(p), n0 = p * pan.tw, nn = std::min<int64_t>(w, N - n0);
        const T* base = xp + pan.offset(p);
        for (int64_t i = i0; i < i1; ++i)
            row_compute<T, W, I, P>(col, vals, perm, crow[i], crow[i + 1], base, w, w,
                                    bias ? bias[i] : T(0), buf + (i - i0) * kMaxTile);
        if (relu)
            for (int64_t i = 0; i < (i1 - i0); ++i)
                for (int64_t j = 0; j < nn; ++j) buf[i * kMaxTile + j] = std::max(buf[i * kMaxTile + j], T(0));
        transpose_block<T>(buf, kMaxTile, Y + n0 * ys + i0, ys, i1 - i0, nn);
    }
}

// out[j] (+)= a . b_j over w values (w a multiple of L), for eight rows b_j at once: eight
// independent accumulators, reduced together.
template <typename T, int W>
inline void dot8(const T* a, const T* const* b, int64_t w, T* out, bool add) {
    typedef typename Vec<T, W>::type vt;
    constexpr int L = Vec<T, W>::L;
    vt s[8] = {};
    for (int64_t n = 0; n < w; n += L) {
        const vt x = vload<T, W>(a + n);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) s[j] += x * vload<T, W>(b[j] + n);
    }
    T r[8];
    reduce8<T, W>(s, r);
    for (int j = 0; j < 8; ++j) out[j] = add ? out[j] + r[j] : r[j];
}

template <typename T, int W>
inline T dot1(const T* a, const T* b, int64_t w) {
    typedef typename Vec<T, W>::type vt;
    constexpr int L = Vec<T, W>::L;
    vt s{}, t{};
    int64_t n = 0;
    for (; n + 2 * L <= w; n += 2 * L) {
        s += vload<T, W>(a + n) * vload<T, W>(b + n);
        t += vload<T, W>(a + n + L) * vload<T, W>(b + n + L);
    }
    if (n < w) s += vload<T, W>(a + n) * vload<T, W>(b + n);
    return hsum<T, W>(s + t);
}

// out[k] = at[row(k)] . bt[col[k]] over the batch, for packed at (R rows) and bt (C rows) with
// the same panels; the threads sweep all rows for one panel before the next.
template <typename T, int W, typename I>
void sddmm(int64_t R, const I* crow, const I* col, const T* ap, const T* bp, int64_t C, int64_t ld,
           int64_t tile, T* out, int nt) {
    const Panels pa{R, ld, clamp_panel<T, W>(tile)}, pb{C, ld, pa.tw};
    if (ld == 0) {
        for (int64_t k = 0; k < static_cast<int64_t>(crow[R]); ++k) out[k] = T(0);
        return;
    }
    const bool par = nt > 1 && static_cast<int64_t>(crow[R]) * ld >= kParallelWork;
#pragma omp parallel num_threads(nt) if (par)
    for (int64_t p = 0; p < pa.count(); ++p) {
        const int64_t w = pa.width(p);
        const T* a0 = ap + pa.offset(p);
        const T* b = bp + pb.offset(p);
        const bool add = p > 0;
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < R; ++i) {
            const T* a = a0 + i * w;
            int64_t k = crow[i];
            const int64_t k1 = crow[i + 1];
            for (; k + 8 <= k1; k += 8) {
                const T* rows[8];
                for (int j = 0; j < 8; ++j) rows[j] = b + static_cast<int64_t>(col[k + j]) * w;
                dot8<T, W>(a, rows, w, out + k, add);
            }
            for (; k < k1; ++k) {
                const T r = dot1<T, W>(a, b + static_cast<int64_t>(col[k]) * w, w);
                out[k] = add ? out[k] + r : r;
            }
        }
    }
}

// Pack X (element (n, c) at X[n*sn + c*sc]) into panels (see Panels), pads zero; with a gate
// (same shape and strides as X), X[n, c] counts as 0 where gate[n, c] <= 0; colsum[c] =
// sum_n X[n, c] (after the gate) when colsum is not null.
template <typename T, int W>
void pack(const T* X, const T* gate, int64_t N, int64_t C, int64_t sn, int64_t sc, T* xp, int64_t ld,
          int64_t tile, T* colsum, int nt) {
    typedef typename Vec<T, W>::type vt;
    constexpr int L = Vec<T, W>::L;
    constexpr int64_t BC = 128 / sizeof(T);
    const Panels pan{C, ld, clamp_panel<T, W>(tile)};
    const int64_t nblocks = (C + BC - 1) / BC, npanels = N > 0 ? pan.count() : 0;
#pragma omp parallel num_threads(nt) if (nt > 1 && C * ld >= kParallelWork)
    {
#pragma omp for schedule(static) collapse(2)
        for (int64_t p = 0; p < npanels; ++p) {
            for (int64_t b = 0; b < nblocks; ++b) {
                const int64_t c0 = b * BC, c1 = std::min<int64_t>(C, c0 + BC);
                const int64_t w = pan.width(p), n0 = p * pan.tw, nb = std::min<int64_t>(w, N - n0);
                T* dst = xp + pan.offset(p);
                const T* src = X + n0 * sn;
                if (gate) {  // gated copy of the block (row-major), then transposed
                    alignas(64) T tmp[kMaxTile * BC];
                    const T* g = gate + n0 * sn;
                    if (sc == 1) {  // contiguous rows: a vectorized select
                        for (int64_t j = 0; j < nb; ++j) {
                            const T* gr = g + j * sn + c0;
                            const T* sr = src + j * sn + c0;
                            T* tr = tmp + j * BC;
                            for (int64_t c = 0; c < c1 - c0; ++c) tr[c] = gr[c] > T(0) ? sr[c] : T(0);
                        }
                    } else {
                        for (int64_t j = 0; j < nb; ++j)
                            for (int64_t c = c0; c < c1; ++c)
                                tmp[j * BC + (c - c0)] = g[j * sn + c * sc] > T(0) ? src[j * sn + c * sc] : T(0);
                    }
                    transpose_block<T>(tmp, BC, dst + c0 * w, w, nb, c1 - c0);
                } else if (sc == 1 && sn != 1) {
                    transpose_block<T>(src + c0, sn, dst + c0 * w, w, nb, c1 - c0);
                } else if (sn == 1) {
                    for (int64_t c = c0; c < c1; ++c)
                        for (int64_t j = 0; j < nb; ++j) dst[c * w + j] = src[c * sc + j];
                } else {
                    for (int64_t j = 0; j < nb; ++j)
                        for (int64_t c = c0; c < c1; ++c) dst[c * w + j] = src[j * sn + c * sc];
                }
                for (int64_t c = c0; c < c1; ++c)
                    for (int64_t j = nb; j < w; ++j) dst[c * w + j] = T(0);
            }
        }
        if (colsum) {  // pads are zero: sum whole panel rows with vector accumulators
#pragma omp for schedule(static)
            for (int64_t c = 0; c < C; ++c) {
                vt s0{};
                for (int64_t p = 0; p < npanels; ++p) {
                    const int64_t w = pan.width(p);
                    const T* row = xp + pan.offset(p) + c * w;
                    for (int64_t j = 0; j < w; j += L) s0 += vload<T, W>(row + j);
                }
                colsum[c] = hsum<T, W>(s0);
            }
        }
    }
}

// Batch 1 (serving one request): y (R,) = W x + b for x (C,), one gather per nonzero and no
// packing (the packed kernels would pad the batch to a full vector). Two nonzeros per step keep
// two independent loads in flight; rows are split across threads in static chunks.
template <typename T, typename I>
void spmv(int64_t R, const I* crow, const I* col, const T* vals, const T* bias, const T* x, T* y, bool relu,
          int nt) {
    const bool par = nt > 1 && static_cast<int64_t>(crow[R]) + R >= kParallelWork;
#pragma omp parallel for schedule(static, 64) num_threads(nt) if (par)
    for (int64_t i = 0; i < R; ++i) {
        T a0 = bias ? bias[i] : T(0), a1 = T(0);
        const int64_t k1 = crow[i + 1];
        int64_t k = crow[i];
        for (; k + 1 < k1; k += 2) {
            a0 += vals[k] * x[col[k]];
            a1 += vals[k + 1] * x[col[k + 1]];
        }
        if (k < k1) a0 += vals[k] * x[col[k]];
        y[i] = relu ? std::max(a0 + a1, T(0)) : a0 + a1;
    }
}

// out[k] = vals[perm[k]]
template <typename T>
void gather(const T* vals, const int64_t* perm, int64_t n, T* out, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n >= kParallelWork)
    for (int64_t k = 0; k < n; ++k) out[k] = vals[perm[k]];
}

}  // namespace

extern "C" {

int sn_abi_version() { return 6; }

int sn_openmp() {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// Whether this build may use 512-bit registers (compiled for a CPU with AVX-512F).
int sn_avx512() {
#if defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}

#define SN_PACK(W, SUF, T)                                                                        \
    void sn_pack_w##W##_##SUF(const T* X, const T* gate, int64_t N, int64_t C, int64_t sn,        \
                              int64_t sc, T* xp, int64_t ld, int64_t tile, T* colsum, int nt) {   \
        pack<T, W>(X, gate, N, C, sn, sc, xp, ld, tile, colsum, nt);                              \
    }

#define SN_SPMM(W, SUF, T, I)                                                                     \
    void sn_spmm_w##W##_##SUF(int64_t R, const I* crow, const I* col, const T* vals,              \
                              const int64_t* perm, const T* bias, const T* xp, int64_t C,         \
                              int64_t ld, int64_t tile, int64_t N, T* Y, int64_t ys, int relu,    \
                              int nt) {                                                           \
        if (perm)                                                                                 \
            spmm<T, W, I, true>(R, crow, col, vals, perm, bias, xp, C, ld, tile, N, Y, ys, relu, nt); \
        else                                                                                      \
            spmm<T, W, I, false>(R, crow, col, vals, perm, bias, xp, C, ld, tile, N, Y, ys, relu, nt); \
    }

#define SN_SDDMM(W, SUF, T, I)                                                                    \
    void sn_sddmm_w##W##_##SUF(int64_t R, const I* crow, const I* col, const T* ap, const T* bp,  \
                               int64_t C, int64_t ld, int64_t tile, T* out, int nt) {             \
        sddmm<T, W, I>(R, crow, col, ap, bp, C, ld, tile, out, nt);                               \
    }

#define SN_WIDTH(W)                                  \
    SN_PACK(W, f32, float)                           \
    SN_PACK(W, f64, double)                          \
    SN_SPMM(W, f32_i32, float, int32_t)              \
    SN_SPMM(W, f32_i64, float, int64_t)              \
    SN_SPMM(W, f64_i32, double, int32_t)             \
    SN_SPMM(W, f64_i64, double, int64_t)             \
    SN_SDDMM(W, f32_i32, float, int32_t)             \
    SN_SDDMM(W, f32_i64, float, int64_t)             \
    SN_SDDMM(W, f64_i32, double, int32_t)            \
    SN_SDDMM(W, f64_i64, double, int64_t)
SN_WIDTH(16)
SN_WIDTH(32)
SN_WIDTH(64)

#define SN_GATHER(SUF, T)                                                                        \
    void sn_gather_##SUF(const T* vals, const int64_t* perm, int64_t n, T* out, int nt) {       \
        gather<T>(vals, perm, n, out, nt);                                                       \
    }
SN_GATHER(f32, float)
SN_GATHER(f64, double)

#define SN_SPMV(SUF, T, I)                                                                        \
    void sn_spmv_##SUF(int64_t R, const I* crow, const I* col, const T* vals, const T* bias,      \
                       const T* x, T* y, int relu, int nt) {                                      \
        spmv<T, I>(R, crow, col, vals, bias, x, y, relu, nt);                                    \
    }
SN_SPMV(f32_i32, float, int32_t)
SN_SPMV(f32_i64, float, int64_t)
SN_SPMV(f64_i32, double, int32_t)
SN_SPMV(f64_i64, double, int64_t)

}  // extern "C"
