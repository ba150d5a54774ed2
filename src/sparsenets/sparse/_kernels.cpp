// sparsenets native CSR kernels (CPU, OpenMP, fixed 32-byte vectors via GCC/Clang vector
// extensions). Built on first use by sparsenets/sparse/kernels.py with the host's compiler
// (-O3 -march=native -fopenmp) and called through ctypes: plain C ABI, raw pointers, no torch
// headers, so the build takes about a second.
//
// The batch dimension is the vector dimension. An activation X (N, C) is first packed
// feature-major: xt (C, ld), ld = N rounded up to the vector width, pad columns zero. Then
//
//   spmm  : Y(n, i) = bias[i] + sum_{k in row i} v[k] * xt[col[k], n]        (forward, grad-input)
//           one nonzero = one broadcast-FMA over a contiguous run of the batch; the result is
//           accumulated for a group of G output rows (one cache line of Y) and a batch tile,
//           then written out row-major (N, R), so no transposed view is ever handed on.
//   sddmm : out[k] = sum_n at[row(k), n] * bt[col[k], n]                      (grad-values)
//           dot products of two contiguous rows, four nonzeros at a time.
//   pack  : xt = X^T with zero padding, any input strides, optional per-feature sums
//           (the bias gradient comes out of packing grad_out).
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

#ifndef SN_PF
#define SN_PF 0
#endif
#ifndef SN_G
#define SN_G 128
#endif

namespace {

// Below this many multiply-adds (or copied values) a call runs on the calling thread: waking
// the pool costs more than it saves.
constexpr int64_t kParallelWork = 1 << 15;

template <typename T>
struct Vec {
    static constexpr int L = 32 / sizeof(T);
    typedef T type __attribute__((vector_size(32)));
};

template <typename T>
inline typename Vec<T>::type vload(const T* p) {
    typename Vec<T>::type r;
    std::memcpy(&r, p, sizeof(r));
    return r;
}

template <typename T>
inline void vstore(T* p, typename Vec<T>::type x) {
    std::memcpy(p, &x, sizeof(x));
}

template <typename T>
inline T hsum(typename Vec<T>::type x) {
    T s = 0;
    for (int q = 0; q < Vec<T>::L; ++q) s += x[q];
    return s;
}

// dst[c*ds + r] = src[r*ss + c] for r < nr, c < nc (a small block, both sides cache-resident).
template <typename T>
inline void transpose_scalar(const T* src, int64_t ss, T* dst, int64_t ds, int64_t nr, int64_t nc) {
    for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < nc; ++c) dst[c * ds + r] = src[r * ss + c];
}

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
    transpose_scalar<T>(s, ss, d, ds, Vec<T>::L, Vec<T>::L);
}
#endif

// dst[c*ds + r] = src[r*ss + c] for r < nr, c < nc, in L x L register tiles.
template <typename T>
inline void transpose_block(const T* src, int64_t ss, T* dst, int64_t ds, int64_t nr, int64_t nc) {
    constexpr int L = Vec<T>::L;
    const int64_t fr = nr - nr % L, fc = nc - nc % L;
    // r innermost: consecutive tiles fill the same destination lines, which matters when the
    // destination stride is a large power of two (those lines compete for one cache set).
    for (int64_t c = 0; c < fc; c += L)
        for (int64_t r = 0; r < fr; r += L) transpose_tile(src + r * ss + c, ss, dst + c * ds + r, ds);
    if (fc < nc) transpose_scalar<T>(src + fc, ss, dst + fc * ds, ds, nr, nc - fc);
    if (fr < nr) transpose_scalar<T>(src + fr * ss, ss, dst + fr, ds, nr - fr, fc);
}

// acc[0:NV*L] = (first ? init : out) + sum_k v[k] * xt[col[k]*ld + off : +NV*L]; stored to out.
template <typename T, typename I, int NV>
inline void row_block(const I* col, const T* vals, int64_t k0, int64_t k1, const T* xt, int64_t ld,
                      int64_t off, T init, bool first, T* out) {
    typedef typename Vec<T>::type vt;
    constexpr int L = Vec<T>::L;
    vt acc[NV];
    for (int q = 0; q < NV; ++q) acc[q] = first ? vt{} + init : vload<T>(out + q * L);
    for (int64_t k = k0; k < k1; ++k) {
#if SN_PF > 0
        if (k + SN_PF < k1) {
            const char* f = reinterpret_cast<const char*>(xt + static_cast<int64_t>(col[k + SN_PF]) * ld + off);
            for (int b = 0; b < NV * 32; b += 64) __builtin_prefetch(f + b);
        }
#endif
        const T v = vals[k];
        const T* p = xt + static_cast<int64_t>(col[k]) * ld + off;
        for (int q = 0; q < NV; ++q) acc[q] += v * vload<T>(p + q * L);
    }
    for (int q = 0; q < NV; ++q) vstore<T>(out + q * L, acc[q]);
}

// Nonzeros [k0, k1) of one output row over batch columns [0, w), w a multiple of L.
template <typename T, typename I>
inline void row_blocks(const I* col, const T* vals, int64_t k0, int64_t k1, const T* xt, int64_t ld,
                       int64_t w, T init, bool first, T* out) {
    constexpr int L = Vec<T>::L;
    int64_t o = 0;
    for (; o + 8 * L <= w; o += 8 * L) row_block<T, I, 8>(col, vals, k0, k1, xt, ld, o, init, first, out + o);
    if (o + 4 * L <= w) { row_block<T, I, 4>(col, vals, k0, k1, xt, ld, o, init, first, out + o); o += 4 * L; }
    if (o + 2 * L <= w) { row_block<T, I, 2>(col, vals, k0, k1, xt, ld, o, init, first, out + o); o += 2 * L; }
    if (o + L <= w) { row_block<T, I, 1>(col, vals, k0, k1, xt, ld, o, init, first, out + o); o += L; }
}

// One output row. With a permutation (grad-input through the CSR of W^T), the row's values are
// first gathered into a local buffer, so each is fetched once rather than once per block.
template <typename T, typename I, bool P>
inline void row_compute(const I* col, const T* vals, const int64_t* perm, int64_t k0, int64_t k1,
                        const T* xt, int64_t ld, int64_t w, T init, T* out) {
    if (!P) {
        row_blocks<T, I>(col, vals, k0, k1, xt, ld, w, init, true, out);
        return;
    }
    constexpr int64_t KB = 512;
    T vb[KB];
    if (k0 == k1) row_blocks<T, I>(col, vb, 0, 0, xt, ld, w, init, true, out);
    for (int64_t kc = k0; kc < k1; kc += KB) {
        const int64_t ke = std::min<int64_t>(k1, kc + KB);
        for (int64_t k = kc; k < ke; ++k) vb[k - kc] = vals[perm[k]];
        row_blocks<T, I>(col + kc, vb, 0, ke - kc, xt, ld, w, init, kc == k0, out);
    }
}

// Packed ("panel") layout of an activation X (N, C): the batch is padded to ld (a multiple of
// the vector width L) and cut into panels of T columns (T a multiple of L; the last panel may be
// narrower); panel p holds X[pT : pT + w_p, :] transposed, C rows of w_p contiguous values, at
// offset C * p * T. With T >= ld this is the plain transpose (C, ld). Panels keep the data one
// kernel pass touches contiguous: a column slab of a row-major (C, ld) array has a power-of-two
// stride and would use a fraction of the cache sets.
struct Panels {
    int64_t C, ld, tw;  // rows, padded batch, panel width
    int64_t count() const { return (ld + tw - 1) / tw; }
    int64_t width(int64_t p) const { return std::min<int64_t>(tw, ld - p * tw); }
    int64_t offset(int64_t p) const { return C * p * tw; }
};

template <typename T>
inline int64_t clamp_panel(int64_t t) {
    constexpr int64_t L = Vec<T>::L, MAXT = 256;
    return std::max<int64_t>(L, std::min<int64_t>(MAXT, t - t % L));
}

// Tasks are (panel, group of G output rows), panel-major, so that at any time the threads read
// the same panel of xt, which stays in cache while every row group uses it; one task
// accumulates G x w outputs in a small buffer and writes them out transposed into Y (N, R).
template <typename T, typename I, bool P>
void spmm(int64_t R, const I* crow, const I* col, const T* vals, const int64_t* perm, const T* bias,
          const T* xp, int64_t C, int64_t ld, int64_t tile, int64_t N, T* Y, int64_t ys, int nt) {
    constexpr int G = SN_G / sizeof(T);  // output rows per task: SN_G bytes of each Y row
    constexpr int64_t MAXT = 256;
    const Panels pan{C, ld, clamp_panel<T>(tile)};
    const int64_t ngroups = (R + G - 1) / G, npanels = N > 0 ? pan.count() : 0;
    const int64_t ntasks = ngroups * npanels;
    const bool par = nt > 1 && (static_cast<int64_t>(crow[R]) + R) * ld >= kParallelWork;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (par)
    for (int64_t task = 0; task < ntasks; ++task) {
        alignas(64) T buf[G * MAXT];
        const int64_t g = task % ngroups, p = task / ngroups;
        const int64_t i0 = g * G, i1 = std::min<int64_t>(R, i0 + G);
        const int64_t w = pan.width(p), n0 = p * pan.tw, nn = std::min<int64_t>(w, N - n0);
        const T* base = xp + pan.offset(p);
        for (int64_t i = i0; i < i1; ++i)
            row_compute<T, I, P>(col, vals, perm, crow[i], crow[i + 1], base, w, w,
                                 bias ? bias[i] : T(0), buf + (i - i0) * MAXT);
        transpose_block<T>(buf, MAXT, Y + n0 * ys + i0, ys, i1 - i0, nn);
    }
}

// sum_{n < w} a[n] * b[n] for four b rows at once (w a multiple of L).
template <typename T>
inline void dot4(const T* a, const T* b0, const T* b1, const T* b2, const T* b3, int64_t w, T* out, bool add) {
    typedef typename Vec<T>::type vt;
    constexpr int L = Vec<T>::L;
    vt s0{}, s1{}, s2{}, s3{}, t0{}, t1{}, t2{}, t3{};
    int64_t n = 0;
    for (; n + 2 * L <= w; n += 2 * L) {
        const vt x = vload<T>(a + n), y = vload<T>(a + n + L);
        s0 += x * vload<T>(b0 + n); t0 += y * vload<T>(b0 + n + L);
        s1 += x * vload<T>(b1 + n); t1 += y * vload<T>(b1 + n + L);
        s2 += x * vload<T>(b2 + n); t2 += y * vload<T>(b2 + n + L);
        s3 += x * vload<T>(b3 + n); t3 += y * vload<T>(b3 + n + L);
    }
    if (n < w) {
        const vt x = vload<T>(a + n);
        s0 += x * vload<T>(b0 + n); s1 += x * vload<T>(b1 + n);
        s2 += x * vload<T>(b2 + n); s3 += x * vload<T>(b3 + n);
    }
    const T r0 = hsum<T>(s0 + t0), r1 = hsum<T>(s1 + t1), r2 = hsum<T>(s2 + t2), r3 = hsum<T>(s3 + t3);
    if (add) { out[0] += r0; out[1] += r1; out[2] += r2; out[3] += r3; }
    else { out[0] = r0; out[1] = r1; out[2] = r2; out[3] = r3; }
}

template <typename T>
inline T dot1(const T* a, const T* b, int64_t w) {
    typedef typename Vec<T>::type vt;
    constexpr int L = Vec<T>::L;
    vt s{}, t{};
    int64_t n = 0;
    for (; n + 2 * L <= w; n += 2 * L) {
        s += vload<T>(a + n) * vload<T>(b + n);
        t += vload<T>(a + n + L) * vload<T>(b + n + L);
    }
    if (n < w) s += vload<T>(a + n) * vload<T>(b + n);
    return hsum<T>(s + t);
}

// out[k] = at[row(k)] . bt[col[k]] over the batch, for packed at (R rows) and bt (C rows) with
// the same panels; the threads sweep all rows for one panel before the next.
template <typename T, typename I>
void sddmm(int64_t R, const I* crow, const I* col, const T* ap, const T* bp, int64_t C, int64_t ld,
           int64_t tile, T* out, int nt) {
    const Panels pa{R, ld, clamp_panel<T>(tile)}, pb{C, ld, pa.tw};
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
            for (; k + 4 <= k1; k += 4)
                dot4<T>(a, b + static_cast<int64_t>(col[k]) * w, b + static_cast<int64_t>(col[k + 1]) * w,
                        b + static_cast<int64_t>(col[k + 2]) * w, b + static_cast<int64_t>(col[k + 3]) * w,
                        w, out + k, add);
            for (; k < k1; ++k) {
                const T r = dot1<T>(a, b + static_cast<int64_t>(col[k]) * w, w);
                out[k] = add ? out[k] + r : r;
            }
        }
    }
}

// Pack X (element (n, c) at X[n*sn + c*sc]) into panels (see Panels), pads zero; colsum[c] =
// sum_n X[n, c] when colsum is not null.
template <typename T>
void pack(const T* X, int64_t N, int64_t C, int64_t sn, int64_t sc, T* xp, int64_t ld, int64_t tile,
          T* colsum, int nt) {
    typedef typename Vec<T>::type vt;
    constexpr int L = Vec<T>::L;
    constexpr int64_t BC = 128 / sizeof(T);
    const Panels pan{C, ld, clamp_panel<T>(tile)};
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
                if (sc == 1 && sn != 1) {
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
                vt s0{}, s1{};
                for (int64_t p = 0; p < npanels; ++p) {
                    const int64_t w = pan.width(p);
                    const T* row = xp + pan.offset(p) + c * w;
                    int64_t j = 0;
                    for (; j + 2 * L <= w; j += 2 * L) {
                        s0 += vload<T>(row + j);
                        s1 += vload<T>(row + j + L);
                    }
                    if (j < w) s0 += vload<T>(row + j);
                }
                colsum[c] = hsum<T>(s0 + s1);
            }
        }
    }
}

// out[k] = vals[perm[k]]
// Batch 1 (serving one request): y (R,) = W x + b for x (C,), one gather per nonzero and no
// packing (the packed kernels would pad the batch to a full vector). Two nonzeros per step keep
// two independent loads in flight; rows are split across threads in static chunks.
template <typename T, typename I>
void spmv(int64_t R, const I* crow, const I* col, const T* vals, const T* bias, const T* x, T* y, int nt) {
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
        y[i] = a0 + a1;
    }
}

template <typename T>
void gather(const T* vals, const int64_t* perm, int64_t n, T* out, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n >= kParallelWork)
    for (int64_t k = 0; k < n; ++k) out[k] = vals[perm[k]];
}

}  // namespace

extern "C" {

int sn_abi_version() { return 4; }

int sn_openmp() {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define SN_PACK(SUF, T)                                                                          \
    void sn_pack_##SUF(const T* X, int64_t N, int64_t C, int64_t sn, int64_t sc, T* xp,         \
                       int64_t ld, int64_t tile, T* colsum, int nt) {                            \
        pack<T>(X, N, C, sn, sc, xp, ld, tile, colsum, nt);                                      \
    }
SN_PACK(f32, float)
SN_PACK(f64, double)

#define SN_GATHER(SUF, T)                                                                        \
    void sn_gather_##SUF(const T* vals, const int64_t* perm, int64_t n, T* out, int nt) {       \
        gather<T>(vals, perm, n, out, nt);                                                       \
    }
SN_GATHER(f32, float)
SN_GATHER(f64, double)

#define SN_SPMM(SUF, T, I)                                                                       \
    void sn_spmm_##SUF(int64_t R, const I* crow, const I* col, const T* vals,                   \
                       const int64_t* perm, const T* bias, const T* xp, int64_t C, int64_t ld,   \
                       int64_t tile, int64_t N, T* Y, int64_t ys, int nt) {                      \
        if (perm)                                                                                \
            spmm<T, I, true>(R, crow, col, vals, perm, bias, xp, C, ld, tile, N, Y, ys, nt);     \
        else                                                                                     \
            spmm<T, I, false>(R, crow, col, vals, perm, bias, xp, C, ld, tile, N, Y, ys, nt);    \
    }
SN_SPMM(f32_i32, float, int32_t)
SN_SPMM(f32_i64, float, int64_t)
SN_SPMM(f64_i32, double, int32_t)
SN_SPMM(f64_i64, double, int64_t)

#define SN_SDDMM(SUF, T, I)                                                                      \
    void sn_sddmm_##SUF(int64_t R, const I* crow, const I* col, const T* ap, const T* bp,       \
                        int64_t C, int64_t ld, int64_t tile, T* out, int nt) {                   \
        sddmm<T, I>(R, crow, col, ap, bp, C, ld, tile, out, nt);                                 \
    }
SN_SDDMM(f32_i32, float, int32_t)
SN_SDDMM(f32_i64, float, int64_t)
SN_SDDMM(f64_i32, double, int32_t)
SN_SDDMM(f64_i64, double, int64_t)

#define SN_SPMV(SUF, T, I)                                                                        \
    void sn_spmv_##SUF(int64_t R, const I* crow, const I* col, const T* vals, const T* bias,      \
                       const T* x, T* y, int nt) {                                                \
        spmv<T, I>(R, crow, col, vals, bias, x, y, nt);                                          \
    }
SN_SPMV(f32_i32, float, int32_t)
SN_SPMV(f32_i64, float, int64_t)
SN_SPMV(f64_i32, double, int32_t)
SN_SPMV(f64_i64, double, int64_t)

}  // extern "C"
