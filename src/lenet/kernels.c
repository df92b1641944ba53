/* Fused CPU kernels for LeNet-5's two conv blocks, two kinds of each:
 *   max-pool blocks (lenet5-relu):     relu(max_pool2d(conv2d(x), 2))
 *   sigmoid blocks (the note's lenet5): avg_pool2d(sigmoid(conv2d(x)), 2)
 *
 * Why: at LeNet's sizes these blocks are most of a training step in eager PyTorch. oneDNN runs
 * a 1-input-channel convolution at a small fraction of the core's FP32 peak, and the 6x28x28
 * conv output (4.8 MB at batch 256) then makes several trips through memory (conv write, pool
 * read, pool-grad write, conv-grad read); at batch 16 the per-call overhead of the four ops per
 * block dominates instead. Here each image is done in L1: the conv rows are computed in vector
 * registers, pooled at once, and only the pooled map (4x smaller) and what the backward needs
 * (a one-byte argmax per pooled value, or the sigmoid outputs) leave the core.
 *
 * Semantics are PyTorch's, value for value: F.conv2d (stride 1, zero padding); F.max_pool2d
 * (2x2, stride 2; the first maximum in row-major window order wins; NaN wins), then F.relu
 * (relu(max) == max(relu): the two commute, so the ReLU runs on the pooled map); or
 * F.sigmoid then F.avg_pool2d (the window's sum in row-major order, / 4). Sums run in a
 * different order than oneDNN's and exp is our own polynomial, so results agree to float32
 * rounding, not bit for bit.
 *
 * Block 1 (c1: 1 input channel): x is (n, h, w); weights (oc, k, k); the pooled output and the
 * argmax are NHWC, (n, ho/2, wo/2, oc), i.e. PyTorch's channels-last (n, oc, ho/2, wo/2).
 * Block 2 (c3: 16 output channels, one AVX-512 vector): x is NHWC (n, h, w, ic); weights are
 * (oc, k, k, ic) (PyTorch's channels-last weight); output and argmax NHWC as above. Its backward
 * also gives the input gradient; for max-pool blocks it uses the pooling's sparsity: only the
 * pooled maxima that survived the ReLU (a quarter of the conv outputs at most) carry a gradient.
 * Built by lenet/kernels.py with the system C compiler; nothing here depends on Python or torch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define VW 32               /* conv output columns per row computed at once (wo <= VW) */
#define KMAX 7              /* largest kernel supported */
#define OCMAX 16            /* most output channels supported */
#define PW (VW + KMAX - 1)  /* padded input row width */
#define HPMAX (VW + KMAX - 1)
#define NONE 255            /* argmax code: the ReLU zeroed this value, so no gradient flows */

/* The ABI: every entry point below and its argument types, one per line ("f32*"/"u8*": float /
 * uint8_t buffers, "i64": int64_t; each returns int, 0 = done). lenet/kernels.py compares this
 * string with the one rendered from its PROTOTYPES table (which sets the ctypes argument types)
 * and leaves the kernels off when they differ: change both when a signature changes. */
const char *lenet_kernels_abi(void) {
  return "lenet_conv_pool_relu_fwd(f32*,i64,i64,i64,f32*,f32*,i64,i64,i64,f32*,u8*,i64)\n"
         "lenet_conv_pool_relu_bwd(f32*,i64,i64,i64,f32*,u8*,i64,i64,i64,f32*,f32*,i64)\n"
         "lenet_conv16_pool_relu_fwd(f32*,i64,i64,i64,i64,f32*,f32*,i64,f32*,u8*,i64)\n"
         "lenet_conv16_pool_relu_bwd(f32*,i64,i64,i64,i64,f32*,i64,f32*,u8*,f32*,f32*,f32*,i64)\n"
         "lenet_conv_sig_avg_fwd(f32*,i64,i64,i64,f32*,f32*,i64,i64,i64,f32*,f32*,i64)\n"
         "lenet_conv_sig_avg_bwd(f32*,i64,i64,i64,f32*,f32*,i64,i64,i64,f32*,f32*,i64)\n"
         "lenet_conv16_sig_avg_fwd(f32*,i64,i64,i64,i64,f32*,f32*,i64,f32*,f32*,i64)\n"
         "lenet_conv16_sig_avg_bwd(f32*,i64,i64,i64,i64,f32*,i64,f32*,f32*,f32*,f32*,f32*,i64)";
}

/* Threads for one call: the caller's count (torch.get_num_threads(), passed in because OpenMP's
 * setting is per calling thread), at least 1 and at most one per image. */
static int team(int64_t nthreads, int64_t n) {
  int64_t nt = nthreads < 1 ? 1 : nthreads;
  if (nt > n) nt = n > 0 ? n : 1;
  return (int)nt;
}

/* The zero-padded image: row r, column c of buf is x[r - pad][c - pad] (0 outside). */
static void pad_image(const float *restrict img, int64_t h, int64_t w, int64_t pad,
                      int64_t hp, float *restrict buf) {
  memset(buf, 0, sizeof(float) * hp * PW);
  for (int64_t i = 0; i < h; i++) memcpy(buf + (i + pad) * PW + pad, img + i * w, sizeof(float) * w);
}

/* One vector of 16 floats (an AVX-512 register; GCC/Clang vector extension, so it still builds
 * for other CPUs). Loads and stores go through memcpy: unaligned, and the compiler emits one
 * vector move for each. Small arrays of v16 indexed by constants after unrolling stay in
 * registers, which plain float loops do not (GCC spills those sums to the stack every step). */
typedef float v16 __attribute__((vector_size(64)));
static inline v16 ld16(const float *p) {
  v16 v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

typedef int32_t v16i __attribute__((vector_size(64)));

/* exp(x) for 16 floats: x = n ln2 + r, |r| <= ln2/2, e^r by its degree-6 Taylor polynomial
 * (relative error ~1e-7), times 2^n built in the exponent bits. Inputs are clamped to
 * [-87, 87], far past where the sigmoid below saturates in float32. */
static inline v16 vexp(v16 x) {
  const v16 hi = (v16){0} + 87.0f, lo = (v16){0} - 87.0f;
  v16i m = x > hi;
  x = (v16)((m & (v16i)hi) | (~m & (v16i)x));
  m = x < lo;
  x = (v16)((m & (v16i)lo) | (~m & (v16i)x));
  const v16 t = x * 1.44269504088896341f + 0.5f;
  v16i n = __builtin_convertvector(t, v16i); /* truncates toward 0: make it floor(t) */
  v16 nf = __builtin_convertvector(n, v16);
  const v16i fix = nf > t; /* t < 0 and not whole: truncation went up by one */
  n += fix;                /* fix is -1 where true */
  nf = __builtin_convertvector(n, v16);
  const v16 r = (x - nf * 0.693359375f) + nf * 2.12194440e-4f;
  v16 p = (v16){0} + (1.0f / 720.0f);
  p = p * r + (1.0f / 120.0f);
  p = p * r + (1.0f / 24.0f);
  p = p * r + (1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v16i bits = (n + 127) << 23;
  return p * (v16)bits;
}

static inline v16 vsigmoid(v16 z) { return 1.0f / (1.0f + vexp(-z)); }

/* Conv output rows i0 and i0+1 for every channel: acc[r][c][j], j < VW (columns >= wo unused). */
static inline __attribute__((always_inline)) void conv_pair(
    const float *restrict buf, const float *restrict wt, const float *restrict bias,
    const int oc, const int k, const int64_t i0, float acc[2][OCMAX][VW]) {
  for (int r = 0; r < 2; r++) {
    v16 a[OCMAX][2]; /* VW = 32 columns = two vectors per channel */
#pragma GCC unroll 16
    for (int c = 0; c < OCMAX; c++) a[c][0] = a[c][1] = (v16){0} + (c < oc ? bias[c] : 0.0f);
    for (int di = 0; di < k; di++) {
      const float *row = buf + (i0 + r + di) * PW;
#pragma GCC unroll 7
      for (int dj = 0; dj < k; dj++) {
        const v16 x0 = ld16(row + dj), x1 = ld16(row + dj + 16);
#pragma GCC unroll 16
        for (int c = 0; c < oc; c++) {
          const float wv = wt[(c * k + di) * k + dj];
          a[c][0] += wv * x0;
          a[c][1] += wv * x1;
        }
      }
    }
#pragma GCC unroll 16
    for (int c = 0; c < oc; c++) {
      st16(acc[r][c], a[c][0]);
      st16(acc[r][c] + 16, a[c][1]);
    }
  }
}

/* The maximum of a 2x2 window given in row-major order, and its position 0..3: the first
 * maximum wins and a NaN wins, as in F.max_pool2d. Branch-free (the comparisons are
 * data-dependent coin flips) so loops over windows vectorise. */
static inline __attribute__((always_inline)) float max4(const float v0, const float v1,
                                                        const float v2, const float v3,
                                                        int *restrict pos) {
  float m = v0;
  int p = 0;
  const int s1 = (v1 > m) | (v1 != v1);
  m = s1 ? v1 : m;
  p = s1 ? 1 : p;
  const int s2 = (v2 > m) | (v2 != v2);
  m = s2 ? v2 : m;
  p = s2 ? 2 : p;
  const int s3 = (v3 > m) | (v3 != v3);
  m = s3 ? v3 : m;
  p = s3 ? 3 : p;
  *pos = p;
  return m;
}

/* Max-pool block epilogue for conv rows 2r, 2r+1: pooled row r, then ReLU (NHWC out/arg). */
static inline __attribute__((always_inline)) void pool_max_relu1(
    float acc[2][OCMAX][VW], const int64_t r, const int oc, const int64_t wq,
    float *restrict out, uint8_t *restrict arg) {
  for (int c = 0; c < oc; c++) {
    float m[VW / 2]; /* over q: vectorisable */
    int p[VW / 2];
    for (int q = 0; q < VW / 2; q++) {
      m[q] = max4(acc[0][c][2 * q], acc[0][c][2 * q + 1], acc[1][c][2 * q],
                  acc[1][c][2 * q + 1], &p[q]);
    }
    for (int64_t q = 0; q < wq; q++) {
      const int64_t o = (r * wq + q) * oc + c;
      const float mm = m[q];
      out[o] = (mm > 0.0f || mm != mm) ? mm : 0.0f; /* relu; NaN stays NaN, as in F.relu */
      /* relu's gradient passes where its output is not <= 0: positive or NaN */
      if (arg) arg[o] = (mm > 0.0f || mm != mm) ? (uint8_t)p[q] : NONE;
    }
  }
}

/* Sigmoid/average block epilogue: sigmoid of both rows (kept in save, (oc, ho, VW), if given),
 * then pooled row r = the window's sum in row-major order / 4, as F.avg_pool2d (NHWC out). */
static inline __attribute__((always_inline)) void sigmoid_avg1(
    float acc[2][OCMAX][VW], const int64_t r, const int oc, const int64_t ho, const int64_t wq,
    float *restrict out, float *restrict save) {
  for (int rr = 0; rr < 2; rr++)
    for (int c = 0; c < oc; c++)
      for (int u = 0; u < VW / 16; u++) {
        const v16 sv = vsigmoid(ld16(acc[rr][c] + 16 * u));
        st16(acc[rr][c] + 16 * u, sv);
        if (save) st16(save + (c * ho + 2 * r + rr) * VW + 16 * u, sv);
      }
  for (int64_t q = 0; q < wq; q++)
    for (int c = 0; c < oc; c++)
      out[(r * wq + q) * oc + c] =
          (((acc[0][c][2 * q] + acc[0][c][2 * q + 1]) + acc[1][c][2 * q]) +
           acc[1][c][2 * q + 1]) / 4.0f;
}

static inline __attribute__((always_inline)) void forward_image(
    const float *restrict img, int64_t h, int64_t w, const float *restrict wt,
    const float *restrict bias, const int oc, const int k, int64_t pad, float *restrict out,
    uint8_t *restrict arg, float *restrict save, const int sig) {
  const int64_t hp = h + 2 * pad, ho = hp - k + 1, wo = w + 2 * pad - k + 1;
  const int64_t wq = wo / 2;
  float buf[HPMAX * PW];
  float acc[2][OCMAX][VW];
  pad_image(img, h, w, pad, hp, buf);
  for (int64_t r = 0; r < ho / 2; r++) {
    conv_pair(buf, wt, bias, oc, k, 2 * r, acc);
    if (sig)
      sigmoid_avg1(acc, r, oc, ho, wq, out, save);
    else
      pool_max_relu1(acc, r, oc, wq, out, arg);
  }
}

static int supported(int64_t h, int64_t w, int64_t oc, int64_t k, int64_t pad) {
  const int64_t ho = h + 2 * pad - k + 1, wo = w + 2 * pad - k + 1;
  return oc >= 1 && oc <= OCMAX && k >= 1 && k <= KMAX && pad >= 0 && ho >= 2 && wo >= 2 &&
         ho % 2 == 0 && wo % 2 == 0 && wo <= VW && h + 2 * pad <= HPMAX;
}

/* Block 1 forward for n one-channel images (sig: 0 = max pool + ReLU, 1 = sigmoid + average
 * pool). arg / save may be NULL (inference); otherwise arg receives the window position 0..3 of
 * each pooled maximum (NONE where the ReLU zeroed it), save the sigmoid outputs
 * (n, oc, ho, 32; columns >= wo unused). Returns 0, or -1 for unsupported sizes. */
static int block1_fwd(const float *x, int64_t n, int64_t h, int64_t w, const float *wt,
                      const float *bias, int64_t oc, int64_t k, int64_t pad, float *out,
                      uint8_t *arg, float *save, const int sig, int64_t nthreads) {
  if (!supported(h, w, oc, k, pad)) return -1;
  const int64_t ho = h + 2 * pad - k + 1, wo = w + 2 * pad - k + 1;
  const int64_t per_out = (ho / 2) * (wo / 2) * oc, per_save = oc * ho * VW;
#pragma omp parallel for schedule(static) num_threads(team(nthreads, n))
  for (int64_t b = 0; b < n; b++) {
    uint8_t *a = arg ? arg + b * per_out : NULL;
    float *sv = save ? save + b * per_save : NULL;
    const float *img = x + b * h * w;
    if (oc == 6 && k == 5 && sig) /* LeNet-5's c1: constants keep the sums in registers */
      forward_image(img, h, w, wt, bias, 6, 5, pad, out + b * per_out, a, sv, 1);
    else if (oc == 6 && k == 5)
      forward_image(img, h, w, wt, bias, 6, 5, pad, out + b * per_out, a, sv, 0);
    else
      forward_image(img, h, w, wt, bias, (int)oc, (int)k, pad, out + b * per_out, a, sv, sig);
  }
  return 0;
}

/* relu(max_pool2d(conv2d(x, w, b, padding=pad), 2)), output NHWC: see block1_fwd. */
int lenet_conv_pool_relu_fwd(const float *x, int64_t n, int64_t h, int64_t w, const float *wt,
                             const float *bias, int64_t oc, int64_t k, int64_t pad, float *out,
                             uint8_t *arg, int64_t nthreads) {
  return block1_fwd(x, n, h, w, wt, bias, oc, k, pad, out, arg, NULL, 0, nthreads);
}

/* Weight-gradient partial sums of one image, added to part[c][di][dj][j] (summed over j later).
 * g[c][i][j] is the gradient at conv output (c, i, j); zero where no gradient flows. */
static inline __attribute__((always_inline)) void weight_grad_image(
    const float *restrict buf, const float *restrict g, const int oc, const int k, int64_t ho,
    float *restrict part) {
  /* Two channels at a time: each input-row load (unaligned, the costly part) feeds both. */
  for (int c0 = 0; c0 < oc; c0 += 2) {
    const int nc = c0 + 1 < oc ? 2 : 1;
    for (int di = 0; di < k; di++) {
      v16 a[2][KMAX][2];
      for (int cc = 0; cc < 2; cc++)
#pragma GCC unroll 7
        for (int dj = 0; dj < KMAX; dj++) a[cc][dj][0] = a[cc][dj][1] = (v16){0};
      for (int64_t i = 0; i < ho; i++) {
        const float *row = buf + (i + di) * PW;
        const float *g0 = g + (c0 * ho + i) * VW, *g1 = g0 + (nc - 1) * ho * VW;
        const v16 g00 = ld16(g0), g01 = ld16(g0 + 16), g10 = ld16(g1), g11 = ld16(g1 + 16);
#pragma GCC unroll 7
        for (int dj = 0; dj < k; dj++) {
          const v16 x0 = ld16(row + dj), x1 = ld16(row + dj + 16);
          a[0][dj][0] += g00 * x0;
          a[0][dj][1] += g01 * x1;
          a[1][dj][0] += g10 * x0;
          a[1][dj][1] += g11 * x1;
        }
      }
      for (int cc = 0; cc < nc; cc++) {
        float *p = part + (((c0 + cc) * k + di) * k) * VW;
        for (int dj = 0; dj < k; dj++) {
          st16(p + dj * VW, ld16(p + dj * VW) + a[cc][dj][0]);
          st16(p + dj * VW + 16, ld16(p + dj * VW + 16) + a[cc][dj][1]);
        }
      }
    }
  }
}

/* Backward of one image of block 1: the gradient g of the conv output ((oc, ho, VW), columns
 * >= wo stay 0), its sums into pb (the bias gradient), then the weight-gradient sums. Max-pool
 * block (a = argmax): each pooled gradient goes to its argmax, one store per pooled value
 * (branch-free: a NONE writes 0 at position 0). Sigmoid/average block (sv = sigmoid outputs):
 * grad / 4 to each of the window's 4 values, times (1 - s) s. Inlined with LeNet-5's sizes. */
static inline __attribute__((always_inline)) void backward_image1(
    const float *restrict go, const uint8_t *restrict a, const float *restrict sv,
    const float *restrict buf, float *restrict g, const int oc, const int k, const int ho,
    const int wo, float *restrict pw, float *restrict pb) {
  const int wq = wo / 2;
  float bacc[OCMAX] = {0};
  if (a) {
    memset(g, 0, sizeof(float) * oc * ho * VW);
    for (int r = 0; r < ho / 2; r++)
      for (int q = 0; q < wq; q++)
#pragma GCC unroll 16
        for (int c = 0; c < oc; c++) {
          const int o = (r * wq + q) * oc + c;
          const int none = a[o] == NONE;
          const int p = none ? 0 : a[o];
          const float v = none ? 0.0f : go[o];
          g[(c * ho + 2 * r + (p >> 1)) * VW + 2 * q + (p & 1)] = v;
          bacc[c] += v;
        }
  } else {
    for (int c = 0; c < oc; c++)
      for (int i = 0; i < ho; i++)
        for (int j = 0; j < wo; j++) {
          const float s = sv[(c * ho + i) * VW + j];
          const float v = (go[((i / 2) * wq + j / 2) * oc + c] / 4.0f) * ((1.0f - s) * s);
          g[(c * ho + i) * VW + j] = v;
          bacc[c] += v;
        }
  }
  for (int c = 0; c < oc; c++) pb[c] += bacc[c];
  weight_grad_image(buf, g, oc, k, ho, pw);
}

/* Gradients of block 1's weights (gw: oc*k*k, gb: oc) from the gradient of its output gout
 * (NHWC like the forward output) and what its forward saved: the argmax (max-pool block) or
 * the sigmoid outputs (sigmoid/average block; the other pointer is NULL). The input needs no
 * gradient. Deterministic for a given thread count (per-thread partials, added in order). */
static int block1_bwd(const float *x, int64_t n, int64_t h, int64_t w, const float *gout,
                      const uint8_t *arg, const float *save, int64_t oc, int64_t k, int64_t pad,
                      float *gw, float *gb, int64_t nthreads) {
  if (!supported(h, w, oc, k, pad)) return -1;
  const int64_t hp = h + 2 * pad, ho = hp - k + 1, wo = w + 2 * pad - k + 1;
  const int64_t wq = wo / 2, per_out = (ho / 2) * wq * oc;
  const int64_t wsize = oc * k * k * VW;
  const int nt = team(nthreads, n);
  float *part = calloc((size_t)nt * (wsize + OCMAX), sizeof(float));
  if (!part) return -2;
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    float *pw = part + t * (wsize + OCMAX), *pb = pw + wsize;
    float *g = calloc((size_t)OCMAX * ho * VW, sizeof(float)); /* columns >= wo stay 0 */
    float buf[HPMAX * PW];
    if (!g) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n; b++) {
      if (!g) continue;
      const float *go = gout + b * per_out;
      const uint8_t *a = arg ? arg + b * per_out : NULL;
      const float *sv = save ? save + b * oc * ho * VW : NULL;
      pad_image(x + b * h * w, h, w, pad, hp, buf);
      if (oc == 6 && k == 5 && ho == 28 && wo == 28)
        backward_image1(go, a, sv, buf, g, 6, 5, 28, 28, pw, pb);
      else
        backward_image1(go, a, sv, buf, g, (int)oc, (int)k, (int)ho, (int)wo, pw, pb);
    }
    free(g);
  }
  if (!failed) {
    for (int64_t i = 0; i < oc * k * k; i++) {
      float s = 0.0f;
      for (int t = 0; t < nt; t++) {
        const float *p = part + t * (wsize + OCMAX) + i * VW;
        for (int j = 0; j < VW; j++) s += p[j];
      }
      gw[i] = s;
    }
    for (int64_t c = 0; c < oc; c++) {
      float s = 0.0f;
      for (int t = 0; t < nt; t++) s += part[t * (wsize + OCMAX) + wsize + c];
      gb[c] = s;
    }
  }
  free(part);
  return failed ? -2 : 0;
}

/* Block 1 (max pool, ReLU) backward: see block1_bwd. */
int lenet_conv_pool_relu_bwd(const float *x, int64_t n, int64_t h, int64_t w, const float *gout,
                             const uint8_t *arg, int64_t oc, int64_t k, int64_t pad, float *gw,
                             float *gb, int64_t nthreads) {
  return block1_bwd(x, n, h, w, gout, arg, NULL, oc, k, pad, gw, gb, nthreads);
}

/* ---- block 2: conv with OC2 = 16 output channels, then either kind of pooling ------------ */

#define OC2 16
#define WO2MAX 12 /* conv output columns per row held in registers (two rows: 24 vectors) */

static int supported2(int64_t h, int64_t w, int64_t ic, int64_t k) {
  const int64_t ho = h - k + 1, wo = w - k + 1;
  return ic >= 1 && ic <= 16 && k >= 1 && k <= KMAX && ho >= 2 && wo >= 2 && ho % 2 == 0 &&
         wo % 2 == 0 && wo <= WO2MAX;
}


/* Conv output rows 2r and 2r+1, all 16 channels: acc[rr][j][o] for j < wo. */
static inline __attribute__((always_inline)) void conv_rows2(
    const float *restrict img, const int w, const int ic, const int k, const int wo, const int r,
    const float *restrict wr, const v16 bv, float acc[2][WO2MAX][OC2]) {
  for (int rr = 0; rr < 2; rr++) {
    v16 a[WO2MAX]; /* one output row, all 16 channels: stays in registers */
    for (int j = 0; j < WO2MAX; j++) a[j] = bv;
    for (int di = 0; di < k; di++) {
      const float *row = img + ((2 * r + rr + di) * w) * ic;
      for (int dj = 0; dj < k; dj++)
        for (int c = 0; c < ic; c++) {
          const v16 wv = ld16(wr + ((di * k + dj) * ic + c) * OC2); /* wr: (k, k, ic, 16) */
#pragma GCC unroll 12
          for (int j = 0; j < wo; j++) a[j] += row[(j + dj) * ic + c] * wv;
        }
    }
#pragma GCC unroll 12
    for (int j = 0; j < wo; j++) st16(acc[rr][j], a[j]);
  }
}

static inline __attribute__((always_inline)) void forward_image2(
    const float *restrict img, const int h, const int w, const int ic, const int k,
    const float *restrict wr, const float *restrict bias, float *restrict out,
    uint8_t *restrict arg, float *restrict save, const int sig) {
  const int ho = h - k + 1, wo = w - k + 1, wq = wo / 2;
  const v16 bv = ld16(bias);
  for (int r = 0; r < ho / 2; r++) {
    float acc[2][WO2MAX][OC2];
    conv_rows2(img, w, ic, k, wo, r, wr, bv, acc);
    if (sig) { /* sigmoid (kept in save, NHWC (ho, wo, 16), if given), then the window mean */
      for (int rr = 0; rr < 2; rr++)
        for (int j = 0; j < wo; j++) {
          const v16 sv = vsigmoid(ld16(acc[rr][j]));
          st16(acc[rr][j], sv);
          if (save) st16(save + ((2 * r + rr) * wo + j) * OC2, sv);
        }
      for (int q = 0; q < wq; q++)
        st16(out + (r * wq + q) * OC2,
             (((ld16(acc[0][2 * q]) + ld16(acc[0][2 * q + 1])) + ld16(acc[1][2 * q])) +
              ld16(acc[1][2 * q + 1])) / 4.0f);
      continue;
    }
    for (int q = 0; q < wq; q++) { /* max pool (first maximum wins, NaN wins), then ReLU */
      float *ov = out + (r * wq + q) * OC2;
      uint8_t *av = arg ? arg + (r * wq + q) * OC2 : NULL;
      for (int o = 0; o < OC2; o++) {
        int pp;
        const float mm = max4(acc[0][2 * q][o], acc[0][2 * q + 1][o], acc[1][2 * q][o],
                              acc[1][2 * q + 1][o], &pp);
        ov[o] = (mm > 0.0f || mm != mm) ? mm : 0.0f;
        if (av) av[o] = (mm > 0.0f || mm != mm) ? (uint8_t)pp : NONE;
      }
    }
  }
}

/* Block 2 forward for NHWC x (n, h, w, ic), 16 output channels, no padding; wt is
 * (16, k, k, ic); output NHWC. sig, arg and save as in block1_fwd (save here is the sigmoid
 * outputs NHWC, (n, ho, wo, 16)). Returns 0, or -1 for unsupported sizes. */
static int block2_fwd(const float *x, int64_t n, int64_t h, int64_t w, int64_t ic,
                      const float *wt, const float *bias, int64_t k, float *out, uint8_t *arg,
                      float *save, const int sig, int64_t nthreads) {
  if (!supported2(h, w, ic, k)) return -1;
  const int64_t ho = h - k + 1, wo = w - k + 1, per_out = (ho / 2) * (wo / 2) * OC2;
  const int64_t per_save = ho * wo * OC2;
  float *wr = malloc(sizeof(float) * k * k * ic * OC2);
  if (!wr) return -2;
  for (int64_t o = 0; o < OC2; o++) /* (16, k, k, ic) -> (k, k, ic, 16): a vector per tap */
    for (int64_t t = 0; t < k * k * ic; t++) wr[t * OC2 + o] = wt[o * k * k * ic + t];
  const int lenet = h == 14 && w == 14 && ic == 6 && k == 5; /* LeNet-5's c3 */
#pragma omp parallel for schedule(static) num_threads(team(nthreads, n))
  for (int64_t b = 0; b < n; b++) {
    uint8_t *a = arg ? arg + b * per_out : NULL;
    float *sv = save ? save + b * per_save : NULL;
    const float *img = x + b * h * w * ic;
    if (lenet && sig)
      forward_image2(img, 14, 14, 6, 5, wr, bias, out + b * per_out, a, sv, 1);
    else if (lenet)
      forward_image2(img, 14, 14, 6, 5, wr, bias, out + b * per_out, a, sv, 0);
    else
      forward_image2(img, (int)h, (int)w, (int)ic, (int)k, wr, bias, out + b * per_out, a, sv,
                     sig);
  }
  free(wr);
  return 0;
}

/* relu(max_pool2d(conv2d(x, w, b), 2)), 16 output channels: see block2_fwd. */
int lenet_conv16_pool_relu_fwd(const float *x, int64_t n, int64_t h, int64_t w, int64_t ic,
                               const float *wt, const float *bias, int64_t k, float *out,
                               uint8_t *arg, int64_t nthreads) {
  return block2_fwd(x, n, h, w, ic, wt, bias, k, out, arg, NULL, 0, nthreads);
}

/* Backward of one image: for each pooled maximum that carries a gradient v, the conv output at
 * (i, j, o) got v; so gw[o] += v * (its k x k x ic input patch) and gx(patch) += v * w[o]. In
 * NHWC a patch row is k*ic consecutive floats: both are short axpys of nv vectors. xp and gxp
 * are this image's input and input gradient with nv*16 floats of slack at the end; wp and gw
 * are (16, k, nv*16) with zeros past k*ic, so the extra lanes only ever add 0. */
static inline __attribute__((always_inline)) void backward_image2(
    const float *restrict xp, const int h, const int w, const int ic, const int k, const int nv,
    const float *restrict wp, const float *restrict go, const uint8_t *restrict a,
    float *restrict gxp, float *restrict gw, float *restrict gb) {
  const int ho = h - k + 1, wo = w - k + 1, wq = wo / 2, segp = nv * 16;
  (void)ho;
  for (int o = 0; o < OC2; o++) { /* channel by channel: gw[o] stays in registers */
    v16 acc[KMAX][KMAX];
    for (int di = 0; di < k; di++)
#pragma GCC unroll 8
      for (int u = 0; u < nv; u++) acc[di][u] = ld16(gw + (o * k + di) * segp + 16 * u);
    float bsum = 0.0f;
    for (int r = 0; r < ho / 2; r++)
      for (int q = 0; q < wq; q++) {
        const int p = a[(r * wq + q) * OC2 + o];
        if (p == NONE) continue;
        const float v = go[(r * wq + q) * OC2 + o];
        const int i = 2 * r + (p >> 1), j = 2 * q + (p & 1);
        bsum += v;
        for (int di = 0; di < k; di++) {
          const float *xs = xp + ((i + di) * w + j) * ic;
          float *gxs = gxp + ((i + di) * w + j) * ic;
          const float *ws = wp + (o * k + di) * segp;
#pragma GCC unroll 8
          for (int u = 0; u < nv; u++) {
            acc[di][u] += v * ld16(xs + 16 * u);
            st16(gxs + 16 * u, ld16(gxs + 16 * u) + v * ld16(ws + 16 * u));
          }
        }
      }
    for (int di = 0; di < k; di++)
#pragma GCC unroll 8
      for (int u = 0; u < nv; u++) st16(gw + (o * k + di) * segp + 16 * u, acc[di][u]);
    gb[o] += bsum;
  }
}

/* Dense backward of one image: gz = d(loss)/d(conv output), (ho, wo, 16). For the input, each
 * output pixel's gradient patch sum_o gz[o] * w[o] is built in registers and added once; for
 * the weights, channel by channel with gw[o] in registers. */
static inline __attribute__((always_inline)) void backward_image2_dense(
    const float *restrict xp, const int h, const int w, const int ic, const int k, const int nv,
    const float *restrict wp, const float *restrict gz, float *restrict gxp, float *restrict gw) {
  const int ho = h - k + 1, wo = w - k + 1, segp = nv * 16;
  for (int i = 0; i < ho; i++)
    for (int j = 0; j < wo; j++) {
      v16 G[KMAX][KMAX];
      for (int di = 0; di < k; di++)
#pragma GCC unroll 8
        for (int u = 0; u < nv; u++) G[di][u] = (v16){0};
      const float *gv = gz + (i * wo + j) * OC2;
      for (int o = 0; o < OC2; o++) {
        const float v = gv[o];
        for (int di = 0; di < k; di++)
#pragma GCC unroll 8
          for (int u = 0; u < nv; u++) G[di][u] += v * ld16(wp + (o * k + di) * segp + 16 * u);
      }
      for (int di = 0; di < k; di++) {
        float *gxs = gxp + ((i + di) * w + j) * ic;
#pragma GCC unroll 8
        for (int u = 0; u < nv; u++) st16(gxs + 16 * u, ld16(gxs + 16 * u) + G[di][u]);
      }
    }
  for (int o = 0; o < OC2; o++) {
    v16 acc[KMAX][KMAX];
    for (int di = 0; di < k; di++)
#pragma GCC unroll 8
      for (int u = 0; u < nv; u++) acc[di][u] = ld16(gw + (o * k + di) * segp + 16 * u);
    for (int i = 0; i < ho; i++)
      for (int j = 0; j < wo; j++) {
        const float v = gz[(i * wo + j) * OC2 + o];
        for (int di = 0; di < k; di++) {
          const float *xs = xp + ((i + di) * w + j) * ic;
#pragma GCC unroll 8
          for (int u = 0; u < nv; u++) acc[di][u] += v * ld16(xs + 16 * u);
        }
      }
    for (int di = 0; di < k; di++)
#pragma GCC unroll 8
      for (int u = 0; u < nv; u++) st16(gw + (o * k + di) * segp + 16 * u, acc[di][u]);
  }
}

/* Gradients of block 2: gx (n, h, w, ic) for the input, gw (16, k, k, ic) and gb (16) for the
 * weights, from gout (n, ho/2, wo/2, 16) and what the forward saved: the argmax (max-pool block)
 * or the sigmoid outputs, NHWC (sigmoid/average block; the other pointer is NULL).
 * Deterministic for a given thread count (per-thread partial sums, added in thread order). */
static int block2_bwd(const float *x, int64_t n, int64_t h, int64_t w, int64_t ic,
                      const float *wt, int64_t k, const float *gout, const uint8_t *arg,
                      const float *save, float *gx, float *gw, float *gb, int64_t nthreads) {
  if (!supported2(h, w, ic, k)) return -1;
  const int64_t ho = h - k + 1, wo = w - k + 1, wq = wo / 2, per_out = (ho / 2) * wq * OC2;
  const int64_t per_save = ho * wo * OC2;
  const int64_t seg = k * ic, nv = (seg + 15) / 16, segp = nv * 16;
  const int64_t img = h * w * ic, wsize = OC2 * k * segp, stride = wsize + OC2;
  const int64_t per_thread = 2 * (img + segp) + per_save;
  const int nt = team(nthreads, n);
  float *part = calloc((size_t)nt * stride, sizeof(float));
  float *wp = calloc((size_t)wsize, sizeof(float));
  float *scratch = malloc(sizeof(float) * nt * per_thread);
  if (!part || !wp || !scratch) {
    free(part), free(wp), free(scratch);
    return -2;
  }
  for (int64_t o = 0; o < OC2; o++) /* (16, k, k*ic) -> (16, k, segp), zero-padded */
    for (int64_t di = 0; di < k; di++)
      memcpy(wp + (o * k + di) * segp, wt + (o * k + di) * seg, sizeof(float) * seg);
  const int lenet = h == 14 && w == 14 && ic == 6 && k == 5; /* LeNet-5's c3: constants */
#pragma omp parallel num_threads(nt)
  {
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    float *pw = part + t * stride, *pb = pw + wsize;
    float *xp = scratch + t * per_thread, *gxp = xp + img + segp, *gz = gxp + img + segp;
    memset(xp + img, 0, sizeof(float) * segp);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n; b++) {
      const float *go = gout + b * per_out;
      memcpy(xp, x + b * img, sizeof(float) * img);
      memset(gxp, 0, sizeof(float) * (img + segp));
      if (arg) {
        const uint8_t *a = arg + b * per_out;
        if (lenet)
          backward_image2(xp, 14, 14, 6, 5, 2, wp, go, a, gxp, pw, pb);
        else
          backward_image2(xp, (int)h, (int)w, (int)ic, (int)k, (int)nv, wp, go, a, gxp, pw, pb);
      } else {
        const float *sv = save + b * per_save;
        v16 bsum = (v16){0};
        for (int64_t i = 0; i < ho; i++) /* avg-pool backward (grad / 4), then sigmoid's */
          for (int64_t j = 0; j < wo; j++) {
            const v16 s = ld16(sv + (i * wo + j) * OC2);
            const v16 v = (ld16(go + ((i / 2) * wq + j / 2) * OC2) / 4.0f) * ((1.0f - s) * s);
            st16(gz + (i * wo + j) * OC2, v);
            bsum += v;
          }
        st16(pb, ld16(pb) + bsum);
        if (lenet)
          backward_image2_dense(xp, 14, 14, 6, 5, 2, wp, gz, gxp, pw);
        else
          backward_image2_dense(xp, (int)h, (int)w, (int)ic, (int)k, (int)nv, wp, gz, gxp, pw);
      }
      memcpy(gx + b * img, gxp, sizeof(float) * img);
    }
  }
  for (int64_t o = 0; o < OC2; o++) { /* sum the partials in thread order; drop the padding */
    for (int64_t di = 0; di < k; di++)
      for (int64_t t2 = 0; t2 < seg; t2++) {
        float s = 0.0f;
        for (int t = 0; t < nt; t++) s += part[t * stride + (o * k + di) * segp + t2];
        gw[(o * k + di) * seg + t2] = s;
      }
    float s = 0.0f;
    for (int t = 0; t < nt; t++) s += part[t * stride + wsize + o];
    gb[o] = s;
  }
  free(part), free(wp), free(scratch);
  return 0;
}

/* Block 2 (max pool, ReLU) backward: see block2_bwd. */
int lenet_conv16_pool_relu_bwd(const float *x, int64_t n, int64_t h, int64_t w, int64_t ic,
                               const float *wt, int64_t k, const float *gout, const uint8_t *arg,
                               float *gx, float *gw, float *gb, int64_t nthreads) {
  return block2_bwd(x, n, h, w, ic, wt, k, gout, arg, NULL, gx, gw, gb, nthreads);
}

/* ---- entry points for the study note's sigmoid blocks (the max-pool ones are above) ---- */

/* avg_pool2d(sigmoid(conv2d(x, w, b, padding=pad)), 2), output NHWC: see block1_fwd. */
int lenet_conv_sig_avg_fwd(const float *x, int64_t n, int64_t h, int64_t w, const float *wt,
                           const float *bias, int64_t oc, int64_t k, int64_t pad, float *out,
                           float *save, int64_t nthreads) {
  return block1_fwd(x, n, h, w, wt, bias, oc, k, pad, out, NULL, save, 1, nthreads);
}

/* Block 1 (sigmoid, average pool) backward: see block1_bwd. */
int lenet_conv_sig_avg_bwd(const float *x, int64_t n, int64_t h, int64_t w, const float *gout,
                           const float *save, int64_t oc, int64_t k, int64_t pad, float *gw,
                           float *gb, int64_t nthreads) {
  return block1_bwd(x, n, h, w, gout, NULL, save, oc, k, pad, gw, gb, nthreads);
}

/* avg_pool2d(sigmoid(conv2d(x, w, b)), 2), 16 output channels: see block2_fwd. */
int lenet_conv16_sig_avg_fwd(const float *x, int64_t n, int64_t h, int64_t w, int64_t ic,
                             const float *wt, const float *bias, int64_t k, float *out,
                             float *save, int64_t nthreads) {
  return block2_fwd(x, n, h, w, ic, wt, bias, k, out, NULL, save, 1, nthreads);
}

/* Block 2 (sigmoid, average pool) backward: see block2_bwd. */
int lenet_conv16_sig_avg_bwd(const float *x, int64_t n, int64_t h, int64_t w, int64_t ic,
                             const float *wt, int64_t k, const float *gout, const float *save,
                             float *gx, float *gw, float *gb, int64_t nthreads) {
  return block2_bwd(x, n, h, w, ic, wt, k, gout, NULL, save, gx, gw, gb, nthreads);
}
