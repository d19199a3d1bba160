/* Fused per-neuron reductions for the recorder's hooks on CPU float32 tensors.
 *
 * On a thin model a hook's cost is memory passes and op dispatch, not arithmetic: the torch formulation of one
 * layer's activation statistics is six ops and four passes over the output, this is one call and one pass while the
 * output is still in cache. The functions take raw addresses: the caller (mlflow_flux/kernels.py) checks device,
 * dtype, contiguity and sizes before calling. Semantics match the torch path in recorder.py, NaN and inf included.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* Independent partial sums per row reduction: without -ffast-math the compiler will not reassociate one. */
#define TILE 16

/* On x86-64 Linux, GCC builds an AVX2 clone beside the baseline one and picks at load time. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SIMD_CLONES
#endif

/* relu(v).sign() in torch: 1 above zero, else 0; NaN does not fire (its sums turn NaN and are counted). */
static inline float fires(float v) { return v > 0.0f ? 1.0f : 0.0f; }

/* Eight floats the compiler keeps in registers (one AVX register, two SSE ones): the loop over rows below must
 * accumulate in registers, and left to itself the auto-vectoriser picked the row loop instead. */
typedef float lanes __attribute__((vector_size(32)));
typedef int32_t mask_lanes __attribute__((vector_size(32)));

/* fires() on eight lanes: a comparison gives all-ones masks, which select the bits of 1.0f. */
#define FIRES(v, one) ((lanes)((mask_lanes)(one) & ((v) > 0.0f)))

SIMD_CLONES
static void activations_rows(const float *restrict y, Py_ssize_t rows, Py_ssize_t channels, double *restrict sums)
{
    double *sum = sums, *sumsq = sums + channels, *pos = sums + 2 * channels;
    float s[CHUNK], q[CHUNK], p[CHUNK];
    for (Py_ssize_t start = 0; start < rows; start += BLOCK_ROWS) {
        Py_ssize_t stop = start + BLOCK_ROWS < rows ? start + BLOCK_ROWS : rows;
        for (Py_ssize_t c0 = 0; c0 < channels; c0 += CHUNK) {
            Py_ssize_t width = channels - c0 < CHUNK ? channels - c0 : CHUNK;
            for (Py_ssize_t c = 0; c < width; ++c)
                s[c] = q[c] = p[c] = 0.0f;
            for (Py_ssize_t r = start; r < stop; ++r) {
                const float *v = y + r * channels + c0;
                for (Py_ssize_t c = 0; c < width; ++c) {
                    s[c] += v[c];
                    q[c] += v[c] * v[c];
                    p[c] += fires(v[c]);
                }
            }
            for (Py_ssize_t c = 0; c < width; ++c) {
                sum[c0 + c] += s[c];
                sumsq[c0 + c] += q[c];
                pos[c0 + c] += p[c];
            }
        }
    }
}

/* Lanes added up in double. */
static inline double lanes_total(lanes x)
{
    double total = 0.0;
    for (int k = 0; k < 8; ++k)
        total += x[k];
    return total;
}

SIMD_CLONES
static void activations_channels(const float *restrict y, Py_ssize_t outer, Py_ssize_t channels, Py_ssize_t inner,
                                 double *restrict sums)
{
    double *sum = sums, *sumsq = sums + channels, *pos = sums + 2 * channels;
    const lanes zero = {0}, one = zero + 1.0f;
    Py_ssize_t vector_inner = inner - inner % 8;
    for (Py_ssize_t o = 0; o < outer; ++o) {
        for (Py_ssize_t c = 0; c < channels; ++c) {
            const float *plane = y + (o * channels + c) * inner;
            lanes s = zero, q = zero, p = zero;
            Py_ssize_t i = 0;
            for (; i < vector_inner; i += 8) {
                lanes v;
                memcpy(&v, plane + i, sizeof v);  /* an unaligned load */
                s += v;
                q += v * v;
                p += FIRES(v, one);
            }
            double ts = lanes_total(s), tq = lanes_total(q), tp = lanes_total(p);
            for (; i < inner; ++i) {
                float v = plane[i];
                ts += v;
                tq += v * v;
                tp += fires(v);
            }
            sum[c] += ts;
            sumsq[c] += tq;
            pos[c] += tp;
        }
    }
}

static PyObject *accumulate_activations(PyObject *self, PyObject *args)
{
    unsigned long long y_address, sums_address;
    Py_ssize_t outer, channels, inner;
    if (!PyArg_ParseTuple(args, "KnnnK", &y_address, &outer, &channels, &inner, &sums_address))
        return NULL;
    if (outer < 0 || channels <= 0 || inner <= 0) {
        PyErr_SetString(PyExc_ValueError, "outer must be >= 0, channels and inner > 0");
        return NULL;
    }
    const float *y = (const float *)(uintptr_t)y_address;
    double *sums = (double *)(uintptr_t)sums_address;
    BEGIN_ALLOW_THREADS_IF(outer * channels * inner >= RELEASE_GIL_ELEMENTS)
    if (inner == 1)
        activations_rows(y, outer, channels, sums);
    else
        activations_channels(y, outer, channels, inner, sums);
    END_ALLOW_THREADS_IF
    Py_RETURN_NONE;
}

SIMD_CLONES
static void row_sumsq(const float *restrict g, Py_ssize_t rows, Py_ssize_t cols, double *restrict out)
{
    for (Py_ssize_t r = 0; r < rows; ++r) {
        const float *row = g + r * cols;
        /* Independent partial sums: without -ffast-math the compiler will not reassociate a single one. */
        float a[TILE] = {0};
        Py_ssize_t c = 0;
        for (; c + TILE <= cols; c += TILE)
            for (int k = 0; k < TILE; ++k)
                a[k] += row[c + k] * row[c + k];
        double total = 0.0;
        for (int k = 0; k < TILE; ++k)
            total += a[k];
        for (; c < cols; ++c)
            total += (double)row[c] * row[c];
        out[r] += total;
    }
}

static PyObject *accumulate_row_sumsq(PyObject *self, PyObject *args)
{
    unsigned long long g_address, out_address;
    Py_ssize_t rows, cols;
    if (!PyArg_ParseTuple(args, "KnnK", &g_address, &rows, &cols, &out_address))
        return NULL;
    if (rows < 0 || cols < 0) {
        PyErr_SetString(PyExc_ValueError, "rows and cols must be >= 0");
        return NULL;
    }
    const float *g = (const float *)(uintptr_t)g_address;
    double *out = (double *)(uintptr_t)out_address;
    BEGIN_ALLOW_THREADS_IF(rows * cols >= RELEASE_GIL_ELEMENTS)
    row_sumsq(g, rows, cols, out);
    END_ALLOW_THREADS_IF
    Py_RETURN_NONE;
}

SIMD_CLONES
static void weight_stats(const float *restrict w, float *restrict previous, Py_ssize_t rows, Py_ssize_t cols,
                         int has_previous, double *restrict out)
{
    double *mean = out, *std = out + rows, *norm = out + 2 * rows, *step = out + 3 * rows;
    const lanes zero = {0};
    for (Py_ssize_t r = 0; r < rows; ++r) {
        const float *row = w + r * cols;
        float *before = previous + r * cols;
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
        /* Second pass, as torch's std: the centred squares, the plain squares for the norm, the step's squares. */
        lanes centred = zero, squares = zero, moved = zero, fm = zero + (float)m;
        for (c = 0; c < vector_cols; c += 8) {
            lanes v, b;
            memcpy(&v, row + c, sizeof v);
            memcpy(&b, before + c, sizeof b);
            lanes d = v - fm, s = v - b;
            centred += d * d;
            squares += v * v;
            moved += s * s;
            memcpy(before + c, &v, sizeof v);
        }
        double sc = lanes_total(centred), sq = lanes_total(squares), sm = lanes_total(moved);
        for (; c < cols; ++c) {
            double v = row[c], d = v - (float)m, s = v - before[c];
            sc += d * d;
            sq += v * v;
            sm += s * s;
            before[c] = row[c];
        }
        mean[r] = m;
        std[r] = cols ? sqrt(sc / cols) : 0.0;
        norm[r] = sqrt(sq);
        step[r] = has_previous ? sqrt(sm) : NAN;
    }
}

static PyObject *weight_statistics(PyObject *self, PyObject *args)
{
    unsigned long long w_address, previous_address, out_address;
    Py_ssize_t rows, cols;
    int has_previous;
    if (!PyArg_ParseTuple(args, "KKnnpK", &w_address, &previous_address, &rows, &cols, &has_previous, &out_address))
        return NULL;
    if (rows < 0 || cols < 0) {
        PyErr_SetString(PyExc_ValueError, "rows and cols must be >= 0");
        return NULL;
    }
    BEGIN_ALLOW_THREADS_IF(rows * cols >= RELEASE_GIL_ELEMENTS)
    weight_stats((const float *)(uintptr_t)w_address, (float *)(uintptr_t)previous_address, rows, cols, has_previous,
                 (double *)(uintptr_t)out_address);
    END_ALLOW_THREADS_IF
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"accumulate_activations", accumulate_activations, METH_VARARGS,
     "accumulate_activations(y, outer, channels, inner, sums): add the sum, sum of squares and count above zero "
     "of a contiguous float32 (outer, channels, inner) block into a contiguous float64 (3, channels) block."},
    {"accumulate_row_sumsq", accumulate_row_sumsq, METH_VARARGS,
     "accumulate_row_sumsq(g, rows, cols, out): add each row's sum of squares of a contiguous float32 (rows, cols) "
     "block into a contiguous float64 (rows,) vector."},
    {"weight_statistics", weight_statistics, METH_VARARGS,
     "weight_statistics(w, previous, rows, cols, has_previous, out): each row's mean, population std, L2 norm and "
     "L2 distance to the same row of previous (NaN without one) of a contiguous float32 (rows, cols) block into a "
     "contiguous float64 (4, rows) block; then copies w into previous."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
