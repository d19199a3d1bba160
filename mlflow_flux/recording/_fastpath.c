/* Fused per-neuron reductions for the recorder on CPU tensors.
 *
 * On a thin model a hook's cost is memory passes and op dispatch, not arithmetic: the torch formulation of one
 * layer's activation statistics is several ops and passes over the output, this is one call and one pass while the
 * output is still in cache. A Tap checks device, dtype, layout and shape before touching memory; layer_statistics
 * takes raw addresses, and its caller (accumulators.py) checks first. The arithmetic is the torch path's in
 * accumulators.py (one definition per statistic), NaN and inf included.
 *
 * Every layer keeps one float64 block of SUM_ROWS rows of `channels` values, and a float32 shift per neuron. The
 * rows, the statistics a snapshot writes (in the trace's order) and when each is defined are declared once, in
 * mlflow_flux/statistics.py: setup.py generates _fastpath_layout.h from it, and the module exports the names it was
 * built with, which fastpath.py checks at import. Shifted sums keep the variance exact whatever the outputs'
 * common offset: the shift is the mean of the window's first batch, so the sums stay near zero (an output of 1e3
 * with a spread of 1e-3 loses nothing, where E[x^2] - E[x]^2 would lose every digit).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_fastpath_layout.h"

/* Rows summed in float before they are added into the float64 accumulators: keeps the inner loops in SIMD
 * registers, and the float count of positives exact (< 2^24). */
#define BLOCK_ROWS 4096
/* Neurons whose float partial sums (3 x 2 KiB) stay in L1 while the rows stream past. Reading whole rows in order
 * matters: walking a narrow column tile down the rows instead touched a new page per row and ran 3x slower on
 * outputs a matmul had just written. */
#define CHUNK 512
/* Below this many elements a call keeps the GIL: handing it over for a few microseconds lets a background Python
 * thread (metric logging, Parquet writing) take it, and the training thread then waits for it to come back. */
#define RELEASE_GIL_ELEMENTS (1 << 20)
#define BEGIN_ALLOW_THREADS_IF(big) { PyThreadState *_save = (big) ? PyEval_SaveThread() : NULL;
#define END_ALLOW_THREADS_IF if (_save) PyEval_RestoreThread(_save); }

/* setup.py passes the SHA-256 of this file, so tests can tell a stale build from a current one. */
#ifndef FASTPATH_SOURCE_SHA256
#define FASTPATH_SOURCE_SHA256 "unknown"
#endif

/* Independent partial sums per row reduction: without -ffast-math the compiler will not reassociate one. */
#define TILE 16

/* On x86-64 Linux, GCC builds AVX-512 and AVX2 clones beside the baseline one and picks at load time. AVX2_CLONES:
 * no AVX-512 clone, for a loop bound by its arithmetic where AVX-512 runs each operation as two (AMD's Zen 4);
 * its AVX2 clone has FMA too (x86-64-v3, named from GCC 11 on). */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#if __GNUC__ >= 11
#define AVX2_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define AVX2_CLONES SIMD_CLONES
#endif
#else
#define SIMD_CLONES
#define AVX2_CLONES
#endif

/* relu(v).sign() in torch: 1 above zero, else 0; NaN does not fire (its sums turn NaN and are counted). */
static inline float fires(float v) { return v > 0.0f ? 1.0f : 0.0f; }

/* relu(v): NaN gives 0 here, where torch's relu gives NaN; the NaN still reaches the shifted sums and is counted. */
static inline float relu(float v) { return v > 0.0f ? v : 0.0f; }

/* bfloat16 is the top half of a float32: CPU autocast gives Linear outputs in it. */
static inline float bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Eight floats the compiler keeps in registers (one AVX register, two SSE ones), for reductions along contiguous
 * memory (conv planes, weight rows): written out, because left to itself the auto-vectoriser picked the outer loop. */
typedef float lanes __attribute__((vector_size(32)));
typedef int32_t mask_lanes __attribute__((vector_size(32)));

/* fires() and relu() on eight lanes: a comparison gives all-ones masks, which select the bits of 1.0f or of v. */
#define FIRES(v, one) ((lanes)((mask_lanes)(one) & ((v) > 0.0f)))
#define RELU(v) ((lanes)((mask_lanes)(v) & ((v) > 0.0f)))

/* Lanes added up in double. */
static inline double lanes_total(lanes x)
{
    double total = 0.0;
    for (int k = 0; k < 8; ++k)
        total += x[k];
    return total;
}

/* ---- Activations ------------------------------------------------------------------------------------------- */

/* (rows, channels) outputs, float32 or bfloat16 (`half` set): the window's first batch sets the shift to its mean. */
SIMD_CLONES
static void rows_shift(const void *restrict data, int half, Py_ssize_t rows, Py_ssize_t channels, float *restrict shift)
{
    double total[CHUNK];
    for (Py_ssize_t c0 = 0; c0 < channels; c0 += CHUNK) {
        Py_ssize_t width = channels - c0 < CHUNK ? channels - c0 : CHUNK;
        for (Py_ssize_t c = 0; c < width; ++c)
            total[c] = 0.0;
        for (Py_ssize_t r = 0; r < rows; ++r) {
            Py_ssize_t at = r * channels + c0;
            for (Py_ssize_t c = 0; c < width; ++c)
                total[c] += half ? bf16_to_float(((const uint16_t *)data)[at + c]) : ((const float *)data)[at + c];
        }
        for (Py_ssize_t c = 0; c < width; ++c)
            shift[c0 + c] = rows ? (float)(total[c] / rows) : 0.0f;
    }
}

/* One value of a Linear's output, float32 or bfloat16. */
static inline float load_value(const void *data, int half, Py_ssize_t at)
{
    return half ? bf16_to_float(((const uint16_t *)data)[at]) : ((const float *)data)[at];
}

/* The rows kernel's body, for float32 (HALF 0) or bfloat16 (HALF 1): four rows per pass over a chunk of columns,
 * so the shift is loaded and each partial sum updated once per four rows (the loop is memory bound in L1). */
#define ROWS_KERNEL(HALF)                                                                                          \
    {                                                                                                              \
        Py_ssize_t r = start;                                                                                      \
        for (; r + 4 <= stop; r += 4) {                                                                            \
            Py_ssize_t at = r * channels + c0;                                                                     \
            for (Py_ssize_t c = 0; c < width; ++c) {                                                               \
                float a = centre[c];                                                                               \
                float x0 = load_value(data, HALF, at + c), x1 = load_value(data, HALF, at + channels + c);          \
                float x2 = load_value(data, HALF, at + 2 * channels + c);                                          \
                float x3 = load_value(data, HALF, at + 3 * channels + c);                                          \
                float d0 = x0 - a, d1 = x1 - a, d2 = x2 - a, d3 = x3 - a;                                          \
                s[c] += (d0 + d1) + (d2 + d3);                                                                     \
                q[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);                                                 \
                p[c] += (fires(x0) + fires(x1)) + (fires(x2) + fires(x3));                                         \
                u[c] += (relu(x0) + relu(x1)) + (relu(x2) + relu(x3));                                             \
            }                                                                                                      \
        }                                                                                                          \
        for (; r < stop; ++r) {                                                                                    \
            Py_ssize_t at = r * channels + c0;                                                                     \
            for (Py_ssize_t c = 0; c < width; ++c) {                                                               \
                float x = load_value(data, HALF, at + c), d = x - centre[c];                                       \
                s[c] += d;                                                                                         \
                q[c] += d * d;                                                                                     \
                p[c] += fires(x);                                                                                  \
                u[c] += relu(x);                                                                                   \
            }                                                                                                      \
        }                                                                                                          \
    }

SIMD_CLONES
static void activations_rows(const void *restrict data, int half, Py_ssize_t rows, Py_ssize_t channels,
                             const float *restrict shift, double *restrict sums)
{
    double *sum = sums + SHIFTED_SUM * channels, *sumsq = sums + SHIFTED_SUMSQ * channels;
    double *pos = sums + POSITIVE * channels, *rel = sums + RELU_SUM * channels;
    float s[CHUNK], q[CHUNK], p[CHUNK], u[CHUNK];
    for (Py_ssize_t start = 0; start < rows; start += BLOCK_ROWS) {
        Py_ssize_t stop = start + BLOCK_ROWS < rows ? start + BLOCK_ROWS : rows;
        for (Py_ssize_t c0 = 0; c0 < channels; c0 += CHUNK) {
            Py_ssize_t width = channels - c0 < CHUNK ? channels - c0 : CHUNK;
            const float *centre = shift + c0;
            for (Py_ssize_t c = 0; c < width; ++c)
                s[c] = q[c] = p[c] = u[c] = 0.0f;
            if (half)
                ROWS_KERNEL(1)
            else
                ROWS_KERNEL(0)
            for (Py_ssize_t c = 0; c < width; ++c) {
                sum[c0 + c] += s[c];
                sumsq[c0 + c] += q[c];
                pos[c0 + c] += p[c];
                rel[c0 + c] += u[c];
            }
        }
    }
}

/* (outer, channels, inner) float32 outputs of a conv: each channel's plane is contiguous. */
SIMD_CLONES
static void planes_shift(const float *restrict y, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
                         float *restrict shift)
{
    for (Py_ssize_t c = 0; c < channels; ++c) {
        double total = 0.0;
        for (Py_ssize_t o = 0; o < outer; ++o) {
            const float *plane = y + (o * channels + c) * inner;
            for (Py_ssize_t i = 0; i < inner; ++i)
                total += plane[i];
        }
        shift[c] = outer * inner ? (float)(total / (outer * inner)) : 0.0f;
    }
}

SIMD_CLONES
static void activations_planes(const float *restrict y, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
                               const float *restrict shift, double *restrict sums)
{
    double *sum = sums + SHIFTED_SUM * channels, *sumsq = sums + SHIFTED_SUMSQ * channels;
    double *pos = sums + POSITIVE * channels, *rel = sums + RELU_SUM * channels;
    const lanes zero = {0}, one = zero + 1.0f;
    Py_ssize_t vector_inner = inner - inner % 8;
    for (Py_ssize_t o = 0; o < outer; ++o) {
        for (Py_ssize_t c = 0; c < channels; ++c) {
            const float *plane = y + (o * channels + c) * inner;
            lanes s = zero, q = zero, p = zero, u = zero, centre = zero + shift[c];
            Py_ssize_t i = 0;
            for (; i < vector_inner; i += 8) {
                lanes v;
                memcpy(&v, plane + i, sizeof v); /* an unaligned load */
                lanes d = v - centre;
                s += d;
                q += d * d;
                p += FIRES(v, one);
                u += RELU(v);
            }
            double ts = lanes_total(s), tq = lanes_total(q), tp = lanes_total(p), tu = lanes_total(u);
            for (; i < inner; ++i) {
                float d = plane[i] - shift[c];
                ts += d;
                tq += d * d;
                tp += fires(plane[i]);
                tu += relu(plane[i]);
            }
            sum[c] += ts;
            sumsq[c] += tq;
            pos[c] += tp;
            rel[c] += tu;
        }
    }
}

/* ---- Gradients --------------------------------------------------------------------------------------------- */

/* A (channels, cols) gradient: one neuron per row (Linear, conv). Adds each row's squared L2 norm to `squares` and
 * its mean absolute value to `absolute`. */
/* AVX2_CLONES: on this host's AMD EPYC (Zen 4) the loop is bound by its arithmetic, and in 8-float lanes with four
 * partial sums per total it took 35 us per paper-scale step of gradients against 43 us in 16-float lanes with two on
 * AVX-512 (the squares alone: 27 us), measured alone in C. */
AVX2_CLONES
static void gradient_rows(const float *restrict g, Py_ssize_t rows, Py_ssize_t cols, double *restrict squares,
                          double *restrict absolute, double *restrict last)
{
    /* Written out in lanes: left to the auto-vectoriser the second sum (|g|) cost ~5% of a paper-scale step
     * (benchmarks/recorder.py). Four independent partial sums per total hide the adds' latency. */
    const lanes zero = {0};
    const mask_lanes magnitude_bits = (mask_lanes){0} + 0x7fffffff;
    Py_ssize_t vector_cols = cols - cols % 32;
    for (Py_ssize_t r = 0; r < rows; ++r) {
        const float *row = g + r * cols;
        lanes a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
        Py_ssize_t c = 0;
        for (; c < vector_cols; c += 32) {
            lanes v0, v1, v2, v3;
            memcpy(&v0, row + c, sizeof v0);
            memcpy(&v1, row + c + 8, sizeof v1);
            memcpy(&v2, row + c + 16, sizeof v2);
            memcpy(&v3, row + c + 24, sizeof v3);
            a0 += v0 * v0;
            a1 += v1 * v1;
            a2 += v2 * v2;
            a3 += v3 * v3;
            b0 += (lanes)((mask_lanes)v0 & magnitude_bits);
            b1 += (lanes)((mask_lanes)v1 & magnitude_bits);
            b2 += (lanes)((mask_lanes)v2 & magnitude_bits);
            b3 += (lanes)((mask_lanes)v3 & magnitude_bits);
        }
        double total = lanes_total((a0 + a1) + (a2 + a3)), magnitude = lanes_total((b0 + b1) + (b2 + b3));
        for (; c < cols; ++c) {
            total += (double)row[c] * row[c];
            magnitude += fabsf(row[c]);
        }
        double mean_magnitude = cols ? magnitude / cols : 0.0;
        squares[r] += total;
        absolute[r] += mean_magnitude;
        last[r] = mean_magnitude; /* this pass's value alone: GraMa as its authors read it */
    }
}

/* A (rows, channels) gradient: one neuron per column (transformers' Conv1D keeps its weight as (in, out)). */
SIMD_CLONES
static void gradient_columns(const float *restrict g, Py_ssize_t rows, Py_ssize_t channels, double *restrict squares,
                             double *restrict absolute, double *restrict last)
{
    float q[CHUNK], b[CHUNK];
    for (Py_ssize_t c = 0; c < channels; ++c)
        last[c] = 0.0;
    for (Py_ssize_t start = 0; start < rows; start += BLOCK_ROWS) {
        Py_ssize_t stop = start + BLOCK_ROWS < rows ? start + BLOCK_ROWS : rows;
        for (Py_ssize_t c0 = 0; c0 < channels; c0 += CHUNK) {
            Py_ssize_t width = channels - c0 < CHUNK ? channels - c0 : CHUNK;
            for (Py_ssize_t c = 0; c < width; ++c)
                q[c] = b[c] = 0.0f;
            for (Py_ssize_t r = start; r < stop; ++r) {
                const float *v = g + r * channels + c0;
                for (Py_ssize_t c = 0; c < width; ++c) {
                    q[c] += v[c] * v[c];
                    b[c] += fabsf(v[c]);
                }
            }
            for (Py_ssize_t c = 0; c < width; ++c) {
                squares[c0 + c] += q[c];
                absolute[c0 + c] += (double)b[c] / rows;
                last[c0 + c] += (double)b[c] / rows;
            }
        }
    }
}

static void add_to_row(double *row, Py_ssize_t channels, double value)
{
    for (Py_ssize_t c = 0; c < channels; ++c)
        row[c] += value;
}

/* ---- Snapshot ---------------------------------------------------------------------------------------------- */

/* A row's mean, then the centred squares: torch's two passes (a first snapshot, or a row whose mean moved). */
SIMD_CLONES
static void row_moments(const float *restrict row, Py_ssize_t cols, double *mean, double *sumsq_centred)
{
    const lanes zero = {0};
    Py_ssize_t vector_cols = cols - cols % 8, c;
    lanes sum = zero;
    for (c = 0; c < vector_cols; c += 8) {
        lanes v;
        memcpy(&v, row + c, sizeof v);
        sum += v;
    }
    double total = lanes_total(sum);
    for (; c < cols; ++c)
        total += row[c];
    double m = cols ? total / cols : 0.0;
    lanes centred = zero, fm = zero + (float)m;
    for (c = 0; c < vector_cols; c += 8) {
        lanes v;
        memcpy(&v, row + c, sizeof v);
        lanes d = v - fm;
        centred += d * d;
    }
    double sc = lanes_total(centred);
    for (; c < cols; ++c) {
        double d = row[c] - (float)m;
        sc += d * d;
    }
    /* Centred on float(m), not m: correct the sum by the difference (exactly what the second pass of torch's
     * std does in float64). */
    double off = (float)m - m;
    *mean = m;
    *sumsq_centred = sc - cols * off * off;
}

/* One row's pass: sums of (w - centre), their squares, and the squared distances from the previous and the first
 * snapshot's weights (each only where that copy is kept, PREVIOUS and INITIAL, so the compiler makes a loop without
 * the loads it does not need); the previous copy then takes the row's values. */
#define WEIGHT_PASS(PREVIOUS, INITIAL)                                                                              \
    {                                                                                                              \
        for (c = 0; c < vector_cols; c += 8) {                                                                     \
            lanes v;                                                                                               \
            memcpy(&v, row + c, sizeof v);                                                                         \
            lanes d = v - fc;                                                                                      \
            s += d;                                                                                                \
            q += d * d;                                                                                            \
            if (PREVIOUS) {                                                                                        \
                lanes b;                                                                                           \
                memcpy(&b, before + c, sizeof b);                                                                  \
                lanes m = v - b;                                                                                   \
                moved += m * m;                                                                                    \
                memcpy(before + c, &v, sizeof v);                                                                  \
            }                                                                                                      \
            if (INITIAL) {                                                                                         \
                lanes i;                                                                                           \
                memcpy(&i, start + c, sizeof i);                                                                   \
                lanes a = v - i;                                                                                   \
                away += a * a;                                                                                     \
            }                                                                                                      \
        }                                                                                                          \
    }

/* Weight mean, population std, L2 norm, step and distance from the start of each row, in one pass over the weights
 * and the copies that are kept (`previous`, which then takes their values, and `initial`; NULL: switched off, the
 * statistic is NaN): the sums are centred on the row's mean at the previous snapshot (`means`, updated here), which
 * weights move little from between two snapshots, so they lose nothing to cancellation. A row whose mean moved by
 * more than half its spread is measured again in two passes: exact either way. */
SIMD_CLONES
static void weight_stats(const float *restrict w, float *restrict previous, float *restrict initial,
                         double *restrict means, Py_ssize_t rows, Py_ssize_t cols, int has_means, int has_previous,
                         int has_initial, double *restrict out)
{
    double *mean = out, *std = out + rows, *norm = out + 2 * rows, *step = out + 3 * rows, *dist0 = out + 4 * rows;
    const lanes zero = {0};
    if (initial != NULL && !has_initial) /* the first snapshot: the weights every later one measures from */
        memcpy(initial, w, (size_t)rows * (size_t)cols * sizeof(float));
    for (Py_ssize_t r = 0; r < rows; ++r) {
        const float *row = w + r * cols, *start = initial ? initial + r * cols : NULL;
        float *before = previous ? previous + r * cols : NULL;
        Py_ssize_t vector_cols = cols - cols % 8, c;
        float centre = has_means ? (float)means[r] : 0.0f;
        lanes s = zero, q = zero, moved = zero, away = zero, fc = zero + centre;
        if (before && start)
            WEIGHT_PASS(1, 1)
        else if (before)
            WEIGHT_PASS(1, 0)
        else if (start)
            WEIGHT_PASS(0, 1)
        else
            WEIGHT_PASS(0, 0)
        double ts = lanes_total(s), tq = lanes_total(q), tm = lanes_total(moved), ta = lanes_total(away);
        for (; c < cols; ++c) {
            double d = row[c] - centre;
            ts += d;
            tq += d * d;
            if (before) {
                double m = row[c] - before[c];
                tm += m * m;
                before[c] = row[c];
            }
            if (start) {
                double a = row[c] - start[c];
                ta += a * a;
            }
        }
        double m = cols ? centre + ts / cols : 0.0, centred = cols ? ts / cols : 0.0;
        double variance = cols ? tq / cols - centred * centred : 0.0;
        if (!has_means || centred * centred > 0.25 * (tq / (cols ? cols : 1))) {
            double sc;
            row_moments(row, cols, &m, &sc);
            variance = cols ? sc / cols : 0.0;
        }
        if (variance < 0)
            variance = 0.0; /* rounding below 0 is 0; NaN stays NaN */
        means[r] = m;
        mean[r] = m;
        std[r] = sqrt(variance);
        norm[r] = sqrt(cols * (variance + m * m));
        step[r] = before && has_previous ? sqrt(tm) : NAN;
        dist0[r] = start ? sqrt(ta) : NAN;
    }
}

/* One input row of a column-per-neuron weight, over the neurons [r0, r1): each neuron's float partial sums of
 * (w - centre), their squares, and the squared steps from the previous and the first snapshot's weights (where
 * kept); the previous copy then takes the row's values. Across the row, so it vectorises over neurons. */
#define COLUMN_PASS(PREVIOUS, INITIAL)                                                                             \
    for (Py_ssize_t r = r0; r < r1; ++r) {                                                                         \
        float v = row[r], d = v - centre[r];                                                                       \
        ps[r - r0] += d;                                                                                           \
        pq[r - r0] += d * d;                                                                                       \
        if (PREVIOUS) {                                                                                            \
            float m = v - before[r];                                                                               \
            pm[r - r0] += m * m;                                                                                   \
            before[r] = v;                                                                                         \
        }                                                                                                          \
        if (INITIAL) {                                                                                             \
            float a = v - start[r];                                                                                \
            pa[r - r0] += a * a;                                                                                   \
        }                                                                                                          \
    }

/* Four input rows at once: each neuron's partial sums are loaded and stored once for the four (the loads and
 * stores of the partials, not the arithmetic, bound the one-row pass). */
#define COLUMN_PASS4(PREVIOUS, INITIAL)                                                                            \
    for (Py_ssize_t r = r0; r < r1; ++r) {                                                                         \
        float c = centre[r], v0 = row[r], v1 = row[rows + r], v2 = row[2 * rows + r], v3 = row[3 * rows + r];     \
        float d0 = v0 - c, d1 = v1 - c, d2 = v2 - c, d3 = v3 - c;                                                  \
        ps[r - r0] += (d0 + d1) + (d2 + d3);                                                                       \
        pq[r - r0] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);                                                   \
        if (PREVIOUS) {                                                                                            \
            float m0 = v0 - before[r], m1 = v1 - before[rows + r], m2 = v2 - before[2 * rows + r],                \
                  m3 = v3 - before[3 * rows + r];                                                                  \
            pm[r - r0] += (m0 * m0 + m1 * m1) + (m2 * m2 + m3 * m3);                                               \
            before[r] = v0;                                                                                        \
            before[rows + r] = v1;                                                                                 \
            before[2 * rows + r] = v2;                                                                             \
            before[3 * rows + r] = v3;                                                                             \
        }                                                                                                          \
        if (INITIAL) {                                                                                             \
            float a0 = v0 - start[r], a1 = v1 - start[rows + r], a2 = v2 - start[2 * rows + r],                   \
                  a3 = v3 - start[3 * rows + r];                                                                   \
            pa[r - r0] += (a0 * a0 + a1 * a1) + (a2 * a2 + a3 * a3);                                               \
        }                                                                                                          \
    }

#define COLUMN_NEURONS 512 /* neurons whose partial sums stay in L1 while a block of rows goes by */
#define COLUMN_BLOCK 64 /* input rows summed in float before their sums join the float64 totals */


/* weight_stats for a layer that keeps a column per neuron (transformers' Conv1D: w is fan_in x neurons, neuron r
 * is column r): the same statistics in one pass down the rows, so the weights are read in memory order. Each block
 * of COLUMN_BLOCK rows is summed in float for COLUMN_NEURONS neurons at a time (as weight_stats sums a row in float
 * lanes), then added to the neurons' float64 totals. `previous` and `initial` keep the same layout. A first snapshot (no means yet) takes one
 * more pass for the means; a neuron whose mean moved by more than half its spread is measured again in two passes
 * down its column. */
SIMD_CLONES
static void weight_stats_columns(const float *restrict w, float *restrict previous, float *restrict initial,
                                 double *restrict means, Py_ssize_t rows, Py_ssize_t cols, int has_means,
                                 int has_previous, int has_initial, double *restrict out)
{
    double *mean = out, *std = out + rows, *norm = out + 2 * rows, *step = out + 3 * rows, *dist0 = out + 4 * rows;
    size_t n = (size_t)(rows ? rows : 1);
    double *s = PyMem_RawCalloc(4 * n, sizeof(double));
    float *centre = PyMem_RawMalloc(n * sizeof(float));
    if (s == NULL || centre == NULL) { /* out of memory: every statistic NaN rather than a crash */
        for (Py_ssize_t r = 0; r < 5 * rows; ++r)
            out[r] = NAN;
        PyMem_RawFree(s);
        PyMem_RawFree(centre);
        return;
    }
    double *q = s + rows, *moved = s + 2 * rows, *away = s + 3 * rows;
    float partial[4 * COLUMN_NEURONS];
    float *restrict ps = partial, *restrict pq = partial + COLUMN_NEURONS, *restrict pm = partial + 2 * COLUMN_NEURONS,
          *restrict pa = partial + 3 * COLUMN_NEURONS;
    if (initial != NULL && !has_initial)
        memcpy(initial, w, (size_t)rows * (size_t)cols * sizeof(float));
    if (!has_means) {
        for (Py_ssize_t i = 0; i < cols; ++i)
            for (Py_ssize_t r = 0; r < rows; ++r)
                s[r] += w[i * rows + r];
        for (Py_ssize_t r = 0; r < rows; ++r) {
            means[r] = cols ? s[r] / cols : 0.0;
            s[r] = 0.0;
        }
    }
    for (Py_ssize_t r = 0; r < rows; ++r)
        centre[r] = (float)means[r];
    for (Py_ssize_t first = 0; first < cols; first += COLUMN_BLOCK) {
        Py_ssize_t last = first + COLUMN_BLOCK < cols ? first + COLUMN_BLOCK : cols;
        for (Py_ssize_t r0 = 0; r0 < rows; r0 += COLUMN_NEURONS) {
            Py_ssize_t r1 = r0 + COLUMN_NEURONS < rows ? r0 + COLUMN_NEURONS : rows;
            memset(partial, 0, sizeof partial);
            Py_ssize_t i = first;
            for (; i + 4 <= last; i += 4) {
                const float *restrict row = w + i * rows;
                float *restrict before = previous ? previous + i * rows : NULL;
                const float *restrict start = initial ? initial + i * rows : NULL;
                if (before && start)
                    COLUMN_PASS4(1, 1)
                else if (before)
                    COLUMN_PASS4(1, 0)
                else if (start)
                    COLUMN_PASS4(0, 1)
                else
                    COLUMN_PASS4(0, 0)
            }
            for (; i < last; ++i) {
                const float *restrict row = w + i * rows;
                float *restrict before = previous ? previous + i * rows : NULL;
                const float *restrict start = initial ? initial + i * rows : NULL;
                if (before && start)
                    COLUMN_PASS(1, 1)
                else if (before)
                    COLUMN_PASS(1, 0)
                else if (start)
                    COLUMN_PASS(0, 1)
                else
                    COLUMN_PASS(0, 0)
            }
            for (Py_ssize_t r = r0; r < r1; ++r) {
                s[r] += ps[r - r0];
                q[r] += pq[r - r0];
                moved[r] += pm[r - r0];
                away[r] += pa[r - r0];
            }
        }
    }
    for (Py_ssize_t r = 0; r < rows; ++r) {
        double m = cols ? centre[r] + s[r] / cols : 0.0, centred = cols ? s[r] / cols : 0.0;
        double variance = cols ? q[r] / cols - centred * centred : 0.0;
        if (centred * centred > 0.25 * (q[r] / (cols ? cols : 1))) { /* the mean moved: two passes down the column */
            double total = 0.0;
            for (Py_ssize_t i = 0; i < cols; ++i)
                total += w[i * rows + r];
            m = cols ? total / cols : 0.0;
            float fm = (float)m;
            double sc = 0.0;
            for (Py_ssize_t i = 0; i < cols; ++i) {
                double d = w[i * rows + r] - fm;
                sc += d * d;
            }
            double off = fm - m;
            variance = cols ? (sc - cols * off * off) / cols : 0.0;
        }
        if (variance < 0)
            variance = 0.0;
        means[r] = m;
        mean[r] = m;
        std[r] = sqrt(variance);
        norm[r] = sqrt(cols * (variance + m * m));
        step[r] = previous && has_previous ? sqrt(moved[r]) : NAN;
        dist0[r] = initial ? sqrt(away[r]) : NAN;
    }
    PyMem_RawFree(s);
    PyMem_RawFree(centre);
}

/* One layer's snapshot: every statistic the layout lists (COMPUTED, in the trace's order), written as float32
 * column-major at `out` (statistic k of row r at out[OUT_ROW[k] * stride + r]); the sums are then zeroed. Returns how many
 * defined values are not finite. */
static PyObject *layer_statistics(PyObject *self, PyObject *args)
{
    unsigned long long w_address, previous_address, initial_address, means_address, bias_address, sums_address;
    unsigned long long shift_address, out_address;
    Py_ssize_t rows, cols, stride;
    int has_means, has_previous, has_initial, columns;
    if (!PyArg_ParseTuple(args, "KKKnnpppKKKKKnp", &w_address, &previous_address, &initial_address, &rows, &cols,
                          &has_means, &has_previous, &has_initial, &means_address, &bias_address, &sums_address,
                          &shift_address, &out_address, &stride, &columns))
        return NULL;
    if (rows < 0 || cols < 0 || stride < rows) {
        PyErr_SetString(PyExc_ValueError, "rows and cols must be >= 0, and stride >= rows");
        return NULL;
    }
    double *weights = PyMem_RawMalloc(5 * (size_t)(rows ? rows : 1) * sizeof(double));
    if (weights == NULL)
        return PyErr_NoMemory();
    float *previous = (float *)(uintptr_t)previous_address, *initial = (float *)(uintptr_t)initial_address;
    const float *bias = (const float *)(uintptr_t)bias_address;
    const float *shift = (const float *)(uintptr_t)shift_address;
    double *sums = (double *)(uintptr_t)sums_address;
    float *out = (float *)(uintptr_t)out_address;
    long long nonfinite = 0;
    BEGIN_ALLOW_THREADS_IF(rows * cols >= RELEASE_GIL_ELEMENTS)
    (columns ? weight_stats_columns : weight_stats)((const float *)(uintptr_t)w_address, previous, initial,
                                                   (double *)(uintptr_t)means_address, rows, cols, has_means,
                                                   has_previous, has_initial, weights);
    for (Py_ssize_t r = 0; r < rows; ++r) {
        double n = sums[COUNT * rows + r], passes = sums[GRAD_PASSES * rows + r], value[N_STATS];
        /* NaN also stands for "not defined": only defined values count as not finite. */
        int known[N_DEFINED] = {0};
        known[DEF_ALWAYS] = 1;
        known[DEF_PREVIOUS] = previous != NULL && has_previous;
        known[DEF_INITIAL] = initial != NULL;
        known[DEF_BIAS] = bias != NULL;
        known[DEF_SAMPLES] = n > 0;
        known[DEF_GRADIENTS] = passes > 0;
        value[W_MEAN] = weights[r];
        value[W_STD] = weights[rows + r];
        value[W_NORM] = weights[2 * rows + r];
        value[W_STEP] = weights[3 * rows + r];
        value[W_DIST0] = weights[4 * rows + r];
        value[BIAS] = bias ? bias[r] : NAN;
        if (n > 0) {
            double centred = sums[SHIFTED_SUM * rows + r] / n;
            double variance = sums[SHIFTED_SUMSQ * rows + r] / n - centred * centred;
            value[ACT_MEAN] = shift[r] + centred;
            value[ACT_STD] = variance < 0 ? 0.0 : sqrt(variance); /* rounding below 0 is 0; NaN stays NaN */
            value[ACT_RATE] = sums[POSITIVE * rows + r] / n;
            value[ACT_RELU_MEAN] = sums[RELU_SUM * rows + r] / n;
        } else {
            value[ACT_MEAN] = value[ACT_STD] = value[ACT_RATE] = value[ACT_RELU_MEAN] = NAN;
        }
        value[GRAD_NORM] = passes > 0 ? sqrt(sums[GRAD_SUMSQ * rows + r] / passes) : NAN;
        value[GRAD_ABS_MEAN] = passes > 0 ? sums[GRAD_ABS * rows + r] / passes : NAN;
        value[GRAD_ABS_LAST] = passes > 0 ? sums[GRAD_ABS_PASS * rows + r] : NAN;
        for (int k = 0; k < N_STATS; ++k) {
            float stored = (float)value[k];
            out[OUT_ROW[k] * stride + r] = stored; /* column-major: each statistic is one contiguous column */
            nonfinite += known[DEFINED[k]] && !isfinite(stored);
        }
    }
    memset(sums, 0, SUM_ROWS * (size_t)rows * sizeof(double));
    END_ALLOW_THREADS_IF
    PyMem_RawFree(weights);
    return PyLong_FromLongLong(nonfinite);
}

/* ---- Resets: columns of a row-major block set in one sweep ----------------------------------------------------
 * A reset gives some units new incoming weights and zeroes their optimizer moments; where a unit is a column (a
 * Conv1D's stored (in, out) weight, a Linear's inputs) torch has no single op for it: index_add_ after a zeroing
 * multiplication, a pass each. Here each row is visited once per target while it is in cache. */

enum { COLUMNS_ZERO = 0, COLUMNS_PACKED = 1, COLUMNS_SAME = 2 };

#define MAX_TARGETS 4

/* The float32 blocks at the addresses of `tuple` (Python ints), at most `limit` of them; -1 with an error set. */
static int addresses(PyObject *tuple, Py_ssize_t limit, const char *message, float **out, Py_ssize_t *count)
{
    *count = PyTuple_GET_SIZE(tuple);
    if (*count > limit) {
        PyErr_SetString(PyExc_ValueError, message);
        return -1;
    }
    for (Py_ssize_t t = 0; t < *count; ++t) {
        unsigned long long address = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(tuple, t));
        if (PyErr_Occurred())
            return -1;
        out[t] = (float *)(uintptr_t)address;
    }
    return 0;
}

/* The int64 indices at `address`, n of them, each in [0, limit); NULL with an IndexError saying `message`. */
static const int64_t *indices_below(unsigned long long address, Py_ssize_t n, Py_ssize_t limit, const char *message)
{
    const int64_t *index = (const int64_t *)(uintptr_t)address;
    for (Py_ssize_t k = 0; k < n; ++k)
        if (index[k] < 0 || index[k] >= limit) {
            PyErr_SetString(PyExc_IndexError, message);
            return NULL;
        }
    return index;
}

/* set_columns(targets, source, mode, index, n, rows, cols): in every float32 (rows, cols) block of `targets` (a
 * tuple of up to four addresses), columns index[0..n) (int64) set to 0 (COLUMNS_ZERO), to the packed (rows, n) float32
 * `source` (COLUMNS_PACKED), or to the same columns of the (rows, cols) float32 block `source` (COLUMNS_SAME). */
static PyObject *set_columns(PyObject *self, PyObject *args)
{
    PyObject *targets;
    unsigned long long source_address, index_address;
    Py_ssize_t n, rows, cols;
    int mode;
    if (!PyArg_ParseTuple(args, "O!KiKnnn", &PyTuple_Type, &targets, &source_address, &mode, &index_address, &n,
                          &rows, &cols))
        return NULL;
    static const char *usage = "set_columns: 1-4 targets, n, rows, cols >= 0, a known mode and its source";
    float *target[MAX_TARGETS];
    Py_ssize_t count;
    if (addresses(targets, MAX_TARGETS, usage, target, &count) < 0)
        return NULL;
    if (count < 1 || n < 0 || rows < 0 || cols < 0 || mode < COLUMNS_ZERO || mode > COLUMNS_SAME
        || (mode != COLUMNS_ZERO && source_address == 0)) {
        PyErr_SetString(PyExc_ValueError, usage);
        return NULL;
    }
    const int64_t *index = indices_below(index_address, n, cols, "set_columns: a column index is out of range");
    if (index == NULL)
        return NULL;
    const float *source = (const float *)(uintptr_t)source_address;
    BEGIN_ALLOW_THREADS_IF(rows * n >= RELEASE_GIL_ELEMENTS)
    for (Py_ssize_t r = 0; r < rows; ++r) {
        for (Py_ssize_t t = 0; t < count; ++t) {
            float *row = target[t] + r * cols;
            if (mode == COLUMNS_ZERO)
                for (Py_ssize_t k = 0; k < n; ++k)
                    row[index[k]] = 0.0f;
            else if (mode == COLUMNS_PACKED) {
                const float *values = source + r * n;
                for (Py_ssize_t k = 0; k < n; ++k)
                    row[index[k]] = values[k];
            } else {
                const float *values = source + r * cols;
                for (Py_ssize_t k = 0; k < n; ++k)
                    row[index[k]] = values[index[k]];
            }
        }
    }
    END_ALLOW_THREADS_IF
    Py_RETURN_NONE;
}

/* zero_rows(targets, index, n, rows, cols): rows index[0..n) (int64) of every float32 (rows, cols) block in `targets`
 * (up to four addresses) set to 0, a memset each: torch's index_fill_ along dim 0 took 1.8x as long on the rows of
 * GPT-2's c_proj and their moments (a ReDo reset's outgoing weights). */
static PyObject *zero_rows(PyObject *self, PyObject *args)
{
    PyObject *targets;
    unsigned long long index_address;
    Py_ssize_t n, rows, cols;
    if (!PyArg_ParseTuple(args, "O!Knnn", &PyTuple_Type, &targets, &index_address, &n, &rows, &cols))
        return NULL;
    static const char *usage = "zero_rows: 1-4 targets, n, rows, cols >= 0";
    float *target[MAX_TARGETS];
    Py_ssize_t count;
    if (addresses(targets, MAX_TARGETS, usage, target, &count) < 0)
        return NULL;
    if (count < 1 || n < 0 || rows < 0 || cols < 0) {
        PyErr_SetString(PyExc_ValueError, usage);
        return NULL;
    }
    const int64_t *index = indices_below(index_address, n, rows, "zero_rows: a row index is out of range");
    if (index == NULL)
        return NULL;
    BEGIN_ALLOW_THREADS_IF(n * cols * count >= RELEASE_GIL_ELEMENTS)
    for (Py_ssize_t t = 0; t < count; ++t)
        for (Py_ssize_t k = 0; k < n; ++k)
            memset(target[t] + index[k] * cols, 0, (size_t)cols * sizeof(float));
    END_ALLOW_THREADS_IF
    Py_RETURN_NONE;
}

#define MAX_RESET_TARGETS 8

/* The value a raw draw stands for: its top 24 bits as a signed integer k, times `scale` (resets.py's _uniform: an
 * arithmetic shift, an exact conversion, one float32 product, so the same bits give the same float). */
static inline float uniform_value(int32_t bits, float scale) { return (float)(bits >> 8) * scale; }

#ifdef __SIZEOF_INT128__
/* numpy's PCG64 (PCG XSL-RR 128/64: the state steps, then the new state gives the output), so that the sweep draws
 * the very bits `bit_generator.random_raw` would, in its order, without the buffer numpy would fill. */
typedef struct {
    __uint128_t state, inc;
    uint64_t spare; /* the high half of the last 64 bits, not yet used */
    int has_spare;
} pcg64;

static inline uint64_t pcg64_next64(pcg64 *g)
{
    static const __uint128_t multiplier =
        ((__uint128_t)0x2360ED051FC65DA4ULL << 64) | (__uint128_t)0x4385DF649FCCF645ULL;
    g->state = g->state * multiplier + g->inc;
    uint64_t high = (uint64_t)(g->state >> 64), low = (uint64_t)g->state;
    unsigned rotation = (unsigned)(high >> 58);
    uint64_t x = high ^ low;
    return (x >> rotation) | (x << ((64 - rotation) & 63));
}

/* 32 bits as resets.py's _raw_bits gives them: the raw 64-bit draws viewed as int32 on a little-endian host, so the
 * low half of each draw first. */
static inline int32_t pcg64_next32(pcg64 *g)
{
    if (g->has_spare) {
        g->has_spare = 0;
        return (int32_t)(uint32_t)g->spare;
    }
    uint64_t drawn = pcg64_next64(g);
    g->spare = drawn >> 32;
    g->has_spare = 1;
    return (int32_t)(uint32_t)drawn;
}

/* reset_units(values, zeros, state, inc, scale, index, n, rows, cols, by_column): a reset's writes into one layer in
 * one sweep. The units index[0..n) (int64, ascending) are columns (by_column) or rows of float32 (rows, cols)
 * blocks; in every block of `values` (the weight and the recorder's copies of it) they take the new incoming
 * weights, 32-bit draws from the PCG64 stream at (state, inc) (each a (high, low) pair of 64-bit halves) converted
 * by uniform_value, drawn in the order of a (rows, n) array by column, (n, cols) by row; in every block of `zeros`
 * (the optimizer's moments of the weight) they are set to 0. One pass over the rows touches each cache line of every
 * block once, where a write per block and the draws would each be a pass of their own; the draws, computed in the
 * pass, overlap its waits on memory. The caller advances its generator by the (count + 1) / 2 draws of 64 bits. */
static PyObject *reset_units(PyObject *self, PyObject *args)
{
    PyObject *value_tuple, *zero_tuple;
    unsigned long long state_high, state_low, inc_high, inc_low, index_address;
    double scale;
    Py_ssize_t n, rows, cols;
    int by_column;
    if (!PyArg_ParseTuple(args, "O!O!(KK)(KK)dKnnnp", &PyTuple_Type, &value_tuple, &PyTuple_Type, &zero_tuple,
                          &state_high, &state_low, &inc_high, &inc_low, &scale, &index_address, &n, &rows, &cols,
                          &by_column))
        return NULL;
    float *values[MAX_RESET_TARGETS], *zeros[MAX_RESET_TARGETS];
    Py_ssize_t value_count, zero_count;
    static const char *too_many = "reset_units: at most 8 blocks of each kind";
    if (addresses(value_tuple, MAX_RESET_TARGETS, too_many, values, &value_count) < 0
        || addresses(zero_tuple, MAX_RESET_TARGETS, too_many, zeros, &zero_count) < 0)
        return NULL;
    if (value_count < 1 || n < 0 || rows < 0 || cols < 0) {
        PyErr_SetString(PyExc_ValueError, "reset_units: a weight, and n, rows, cols >= 0");
        return NULL;
    }
    const int64_t *index = indices_below(index_address, n, by_column ? cols : rows,
                                         "reset_units: a unit index is out of range");
    if (index == NULL)
        return NULL;
    pcg64 g = {((__uint128_t)state_high << 64) | state_low, ((__uint128_t)inc_high << 64) | inc_low, 0, 0};
    const float s = (float)scale;
    /* The size is the memory swept, not the units' elements: by column each unit costs a cache line (16 floats) in
     * every row of every block. A reset of a few dozen of GPT-2's 3072 units per layer sweeps ~5 MB a layer; held,
     * the GIL would keep the other layers' resets, run side by side, waiting on it. */
    Py_ssize_t swept = (by_column ? rows * (16 * n < cols ? 16 * n : cols) : n * cols) * (value_count + zero_count);
    BEGIN_ALLOW_THREADS_IF(swept >= RELEASE_GIL_ELEMENTS)
    if (by_column) {
        for (Py_ssize_t r = 0; r < rows; ++r) {
            float *first = values[0] + r * cols;
            for (Py_ssize_t k = 0; k < n; ++k)
                first[index[k]] = uniform_value(pcg64_next32(&g), s);
            for (Py_ssize_t t = 1; t < value_count; ++t) {
                float *row = values[t] + r * cols;
                for (Py_ssize_t k = 0; k < n; ++k)
                    row[index[k]] = first[index[k]];
            }
            for (Py_ssize_t t = 0; t < zero_count; ++t) {
                float *row = zeros[t] + r * cols;
                for (Py_ssize_t k = 0; k < n; ++k)
                    row[index[k]] = 0.0f;
            }
        }
    } else {
        for (Py_ssize_t k = 0; k < n; ++k) {
            float *first = values[0] + index[k] * cols;
            for (Py_ssize_t c = 0; c < cols; ++c)
                first[c] = uniform_value(pcg64_next32(&g), s);
            for (Py_ssize_t t = 1; t < value_count; ++t)
                memcpy(values[t] + index[k] * cols, first, (size_t)cols * sizeof(float));
            for (Py_ssize_t t = 0; t < zero_count; ++t)
                memset(zeros[t] + index[k] * cols, 0, (size_t)cols * sizeof(float));
        }
    }
    END_ALLOW_THREADS_IF
    Py_RETURN_NONE;
}
#endif /* __SIZEOF_INT128__: without a 128-bit integer there is no reset_units, and resets.py writes with torch */

/* ---- Taps: the reductions as callables ----------------------------------------------------------------------
 * A Tap takes one tensor (a layer's output, or its weight's gradient) and reduces it into its layer's sums without
 * a Python frame. Anything it does not take (not a CPU, strided, contiguous tensor of the expected dtype and shape,
 * or a deactivated tap) goes to the Python fallback it was built with, which holds the torch path. */

enum { TAP_ROWS = 0, TAP_PLANES = 1, TAP_GRADIENT_ROWS = 2, TAP_GRADIENT_COLUMNS = 3 };

typedef struct {
    PyObject_HEAD
    PyObject *fallback;
    double *sums;    /* SUM_ROWS x channels */
    float *shift;    /* channels */
    Py_ssize_t channels;
    int kind;
    int ndim;        /* a conv's batched output rank (its weight's rank); an unbatched output goes to the fallback */
    int active;
    int skip;        /* gradient taps: 1 drops the next gradient (its forward pass was not a training one) */
} Tap;

static PyObject *TensorType, *Float32, *BFloat16, *Strided, *Detached, *Same;
static PyObject *s_dtype, *s_layout, *s_is_cpu, *s_is_contiguous, *s_shape, *s_data_ptr;

/* The size of a shape tuple's dimension, or -1 with an exception set. */
static Py_ssize_t dimension(PyObject *shape, Py_ssize_t index)
{
    return PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, index));
}

/* 1: t is a CPU, strided, contiguous tensor of float32 (or bfloat16 when `allow_half`), and its address, shape (a
 * new reference), element count and whether it is bfloat16 are filled in; 0: it is not; -1: an exception is set. */
static int cpu_block(PyObject *t, int allow_half, uintptr_t *address, PyObject **shape, Py_ssize_t *numel, int *half)
{
    if (!PyObject_TypeCheck(t, (PyTypeObject *)TensorType))
        return 0;
    PyObject *dtype = PyObject_GetAttr(t, s_dtype);
    if (dtype == NULL)
        return -1;
    *half = dtype == BFloat16;
    int accepted = dtype == Float32 || (allow_half && *half);
    Py_DECREF(dtype);
    if (!accepted)
        return 0;
    PyObject *names[] = {s_layout, s_is_cpu};
    PyObject *wanted[] = {Strided, Py_True};
    for (int i = 0; i < 2; ++i) {
        PyObject *value = PyObject_GetAttr(t, names[i]);
        if (value == NULL)
            return -1;
        int same = value == wanted[i];
        Py_DECREF(value);
        if (!same)
            return 0;
    }
    PyObject *contiguous = PyObject_CallMethodNoArgs(t, s_is_contiguous);
    if (contiguous == NULL)
        return -1;
    int is_contiguous = contiguous == Py_True;
    Py_DECREF(contiguous);
    if (!is_contiguous)
        return 0;
    PyObject *pointer = PyObject_CallMethodNoArgs(t, s_data_ptr);
    if (pointer == NULL)
        return -1;
    *address = (uintptr_t)PyLong_AsUnsignedLongLong(pointer);
    Py_DECREF(pointer);
    if (PyErr_Occurred())
        return -1;
    *shape = PyObject_GetAttr(t, s_shape);
    if (*shape == NULL)
        return -1;
    if (!PyTuple_Check(*shape)) { /* torch.Size is a tuple */
        Py_CLEAR(*shape);
        return 0;
    }
    *numel = 1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(*shape); ++i) {
        Py_ssize_t size = dimension(*shape, i);
        if (size < 0) {
            Py_CLEAR(*shape);
            return PyErr_Occurred() ? -1 : 0;
        }
        *numel *= size;
    }
    return 1;
}

/* 1 when the tap took the gradient, 0 when the fallback must, -1 on error. */
static int take_gradient(Tap *self, PyObject *grad)
{
    uintptr_t address;
    PyObject *shape = NULL;
    Py_ssize_t numel;
    int half;
    int found = cpu_block(grad, 0, &address, &shape, &numel, &half);
    if (found <= 0)
        return found;
    Py_ssize_t ndim = PyTuple_GET_SIZE(shape);
    Py_ssize_t first = ndim ? dimension(shape, 0) : 0, last = ndim ? dimension(shape, ndim - 1) : 0;
    Py_DECREF(shape);
    int rows_kind = self->kind == TAP_GRADIENT_ROWS;
    if (rows_kind ? (first != self->channels || numel % self->channels) : (ndim != 2 || last != self->channels))
        return 0;
    BEGIN_ALLOW_THREADS_IF(numel >= RELEASE_GIL_ELEMENTS)
    double *squares = self->sums + GRAD_SUMSQ * self->channels, *absolute = self->sums + GRAD_ABS * self->channels;
    double *last = self->sums + GRAD_ABS_PASS * self->channels;
    if (rows_kind)
        gradient_rows((const float *)address, self->channels, numel / self->channels, squares, absolute, last);
    else
        gradient_columns((const float *)address, numel / self->channels, self->channels, squares, absolute, last);
    add_to_row(self->sums + GRAD_PASSES * self->channels, self->channels, 1.0);
    END_ALLOW_THREADS_IF
    return 1;
}

static int take_activations(Tap *self, PyObject *output)
{
    uintptr_t address;
    PyObject *shape = NULL;
    Py_ssize_t numel;
    int half;
    int found = cpu_block(output, self->kind == TAP_ROWS, &address, &shape, &numel, &half);
    if (found <= 0)
        return found;
    Py_ssize_t ndim = PyTuple_GET_SIZE(shape), outer = 0, inner = 0;
    /* Viewed as (outer, neurons, inner): a Linear's outputs are rows of neurons, a conv's are channel planes. */
    if (self->kind == TAP_PLANES && ndim == self->ndim && dimension(shape, 1) == self->channels) {
        outer = dimension(shape, 0);
        inner = outer ? numel / (outer * self->channels) : 1;
    } else if (self->kind == TAP_ROWS && ndim >= 1 && dimension(shape, ndim - 1) == self->channels) {
        outer = numel / self->channels;
        inner = 1;
    }
    Py_DECREF(shape);
    if (inner <= 0 || outer == 0)
        return outer == 0 && inner > 0; /* an empty batch adds nothing */
    double *count = self->sums + COUNT * self->channels;
    BEGIN_ALLOW_THREADS_IF(numel >= RELEASE_GIL_ELEMENTS)
    if (count[0] == 0.0) { /* the window's first batch: its mean becomes the shift */
        if (inner == 1)
            rows_shift((const void *)address, half, outer, self->channels, self->shift);
        else
            planes_shift((const float *)address, outer, self->channels, inner, self->shift);
    }
    if (inner == 1)
        activations_rows((const void *)address, half, outer, self->channels, self->shift, self->sums);
    else
        activations_planes((const float *)address, outer, self->channels, inner, self->shift, self->sums);
    add_to_row(count, self->channels, (double)(outer * inner));
    END_ALLOW_THREADS_IF
    return 1;
}

static PyObject *tap_call(Tap *self, PyObject *args, PyObject *kwargs)
{
    int taken = 0;
    if (self->kind >= TAP_GRADIENT_ROWS && self->skip) {
        self->skip = 0; /* the backward pass of an evaluation forward: counted neither way */
        Py_RETURN_NONE;
    }
    if (self->active && PyTuple_GET_SIZE(args) == 1 && (kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0)) {
        PyObject *tensor = PyTuple_GET_ITEM(args, 0);
        taken = self->kind >= TAP_GRADIENT_ROWS ? take_gradient(self, tensor) : take_activations(self, tensor);
    }
    if (taken < 0)
        return NULL;
    if (taken)
        Py_RETURN_NONE;
    return PyObject_Call(self->fallback, args, kwargs);
}

static int tap_init(Tap *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"kind", "channels", "sums", "shift", "fallback", "ndim", NULL};
    unsigned long long sums, shift;
    PyObject *fallback;
    self->ndim = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "inKKO|i", keywords, &self->kind, &self->channels, &sums, &shift,
                                     &fallback, &self->ndim))
        return -1;
    if (TensorType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "call _fastpath.setup(...) before building a Tap");
        return -1;
    }
    if (self->kind < TAP_ROWS || self->kind > TAP_GRADIENT_COLUMNS || self->channels <= 0 || !PyCallable_Check(fallback)
        || (self->kind == TAP_PLANES && self->ndim < 3)) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 to 3, channels > 0, fallback callable, ndim >= 3 for kind 1");
        return -1;
    }
    self->sums = (double *)(uintptr_t)sums;
    self->shift = (float *)(uintptr_t)shift;
    self->active = 1;
    self->skip = 0;
    Py_INCREF(fallback);
    Py_XSETREF(self->fallback, fallback);
    return 0;
}

static PyObject *tap_deactivate(Tap *self, PyObject *unused)
{
    self->active = 0; /* every call goes to the fallback: the sums' memory may be gone (a model moved to a GPU) */
    Py_RETURN_NONE;
}

static int tap_traverse(Tap *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    return 0;
}

static int tap_clear(Tap *self)
{
    Py_CLEAR(self->fallback);
    return 0;
}

static void tap_dealloc(Tap *self)
{
    PyObject_GC_UnTrack(self);
    tap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A copied or unpickled model is not watched: a tap reduces to the `detached` factory given to setup(), whose
 * result does nothing. copy.deepcopy goes through this too, and must never copy the sums' address. */
static PyObject *tap_reduce(Tap *self, PyObject *unused)
{
    return Py_BuildValue("(O())", Detached);
}

static PyMethodDef tap_methods[] = {
    {"deactivate", (PyCFunction)tap_deactivate, METH_NOARGS, "Hand every later call to the fallback."},
    {"__reduce__", (PyCFunction)tap_reduce, METH_NOARGS, "A detached, do-nothing hook in the copy."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef tap_members[] = {
    {"active", T_INT, offsetof(Tap, active), READONLY, "whether the tap takes calls itself"},
    {"skip", T_INT, offsetof(Tap, skip), 0, "gradient taps: 1 drops the next gradient, then resets to 0"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mlflow_flux.recording._fastpath.Tap",
    .tp_doc = "Tap(kind, channels, sums, shift, fallback, ndim=0): called with one tensor, adds it into the float64 "
              "sums (SUM_ROWS rows of `channels`) at address `sums`, with the float32 shift at `shift`. kind 0: a Linear's "
              "outputs (float32 or bfloat16), 1: a conv's batched outputs of rank ndim, 2: a gradient with one neuron "
              "per row, 3: a gradient with one neuron per column. Calls it cannot take go to fallback.",
    .tp_basicsize = sizeof(Tap),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tap_init,
    .tp_call = (ternaryfunc)tap_call,
    .tp_traverse = (traverseproc)tap_traverse,
    .tp_clear = (inquiry)tap_clear,
    .tp_dealloc = (destructor)tap_dealloc,
    .tp_members = tap_members,
    .tp_methods = tap_methods,
};

static PyObject *setup(PyObject *self, PyObject *args)
{
    PyObject *tensor_type, *float32, *bfloat16, *strided, *detached, *same;
    if (!PyArg_ParseTuple(args, "O!OOOOO", &PyType_Type, &tensor_type, &float32, &bfloat16, &strided, &detached,
                          &same))
        return NULL;
    PyObject *given[] = {tensor_type, float32, bfloat16, strided, detached, same};
    PyObject **slots[] = {&TensorType, &Float32, &BFloat16, &Strided, &Detached, &Same};
    for (int i = 0; i < 6; ++i) {
        Py_INCREF(given[i]);
        Py_XSETREF(*slots[i], given[i]);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"layer_statistics", layer_statistics, METH_VARARGS,
     "layer_statistics(w, previous, initial, rows, cols, has_means, has_previous, has_initial, means, bias, sums, "
     "shift, out, stride, columns): one layer's snapshot. Weight mean, population std, L2 norm, step from `previous` "
     "(which then takes w's values; address 0: not kept) and distance from `initial` (which takes w's values when "
     "has_initial is false; address 0: not kept) of a float32 (rows, cols) block (columns: a (cols, rows) block, a "
     "column per neuron, and so the copies), centred on the float64 row means of the last "
     "snapshot (then updated), bias from a float32 vector (address 0: none), the activation and gradient statistics "
     "from the float64 sums (then zeroed) and the float32 shift, written as float32 column-major at `out` (statistic k "
     "of row r at out[OUT_ROW[k] * stride + r], k in STATISTICS' order). Returns how many defined values are not finite."},
    {"set_columns", set_columns, METH_VARARGS,
     "set_columns(targets, source, mode, index, n, rows, cols): columns index[0..n) of each float32 (rows, cols) "
     "block at the addresses in `targets` set to 0 (mode 0), to a packed (rows, n) float32 source (mode 1) or to the "
     "same columns of a (rows, cols) float32 source block (mode 2), row by row."},
    {"zero_rows", zero_rows, METH_VARARGS,
     "zero_rows(targets, index, n, rows, cols): rows index[0..n) of each float32 (rows, cols) block at the addresses "
     "in `targets` (up to four) set to 0, a memset each."},
#ifdef __SIZEOF_INT128__
    {"reset_units", reset_units, METH_VARARGS,
     "reset_units(values, zeros, state, inc, scale, index, n, rows, cols, by_column): units index[0..n) (columns or "
     "rows of float32 (rows, cols) blocks) of each block in `values` set to 32-bit draws of the PCG64 stream at "
     "(state, inc) as (bits >> 8) * scale in float32, and of each block in `zeros` set to 0, in one sweep."},
#endif
    {"setup", setup, METH_VARARGS,
     "setup(torch.Tensor, torch.float32, torch.bfloat16, torch.strided, detached, same): what the taps compare "
     "against, the factory a copied tap reduces to, and the identity a copied wrapper reduces through."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    const char *names[] = {"dtype", "layout", "is_cpu", "is_contiguous", "shape", "data_ptr"};
    PyObject **slots[] = {&s_dtype, &s_layout, &s_is_cpu, &s_is_contiguous, &s_shape, &s_data_ptr};
    for (int i = 0; i < 6; ++i)
        if ((*slots[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return NULL;
    if (PyType_Ready(&TapType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* AddObjectRef (3.10+) takes its own reference, so a failure part-way leaves no count to undo. */
    PyObject *sum_names = Py_BuildValue("(" SUM_FORMAT ")", SUM_NAMES_LIST);
    PyObject *stat_names = Py_BuildValue("(" STAT_FORMAT ")", STAT_NAMES_LIST);
    int failed = sum_names == NULL || stat_names == NULL || PyModule_AddObjectRef(m, "SUMS", sum_names) < 0
                 || PyModule_AddObjectRef(m, "STATISTICS", stat_names) < 0;
    Py_XDECREF(sum_names);
    Py_XDECREF(stat_names);
    if (failed || PyModule_AddObjectRef(m, "Tap", (PyObject *)&TapType) < 0
        || PyModule_AddIntConstant(m, "SUM_ROWS", SUM_ROWS) < 0
        || PyModule_AddStringConstant(m, "source_sha256", FASTPATH_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
