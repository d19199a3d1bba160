/* Fused per-neuron reductions for the recorder's hooks on CPU float32 tensors.
 *
 * On a thin model a hook's cost is memory passes and op dispatch, not arithmetic: the torch formulation of one
 * layer's activation statistics is six ops and four passes over the output, this is one call and one pass while the
 * output is still in cache. The hooks (Tap, Forward) check device, dtype, layout and shape before touching memory;
 * layer_statistics takes raw addresses, and its caller (accumulators.py) checks first. Semantics match
 * the torch path in accumulators.py, NaN and inf included.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
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

/* setup.py passes the SHA-256 of this file, so tests can tell a stale build from a current one. */
#ifndef FASTPATH_SOURCE_SHA256
#define FASTPATH_SOURCE_SHA256 "unknown"
#endif

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

/* Eight floats the compiler keeps in registers (one AVX register, two SSE ones), for reductions along contiguous
 * memory (conv planes, weight rows): written out, because left to itself the auto-vectoriser picked the outer loop. */
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

/* The statistics of one layer in the order layer_statistics takes its column positions. */
enum { W_MEAN, W_STD, W_NORM, W_STEP, BIAS, ACT_MEAN, ACT_STD, ACT_RATE, GRAD_NORM, N_STATS };

static PyObject *layer_statistics(PyObject *self, PyObject *args)
{
    unsigned long long w_address, previous_address, bias_address, sums_address, out_address;
    Py_ssize_t rows, cols;
    long long samples, passes;
    int has_previous, at[N_STATS];
    if (!PyArg_ParseTuple(args, "KKnnpKKLLK(iiiiiiiii)", &w_address, &previous_address, &rows, &cols, &has_previous,
                          &bias_address, &sums_address, &samples, &passes, &out_address, &at[W_MEAN], &at[W_STD],
                          &at[W_NORM], &at[W_STEP], &at[BIAS], &at[ACT_MEAN], &at[ACT_STD], &at[ACT_RATE],
                          &at[GRAD_NORM]))
        return NULL;
    if (rows < 0 || cols < 0 || samples < 0 || passes < 0) {
        PyErr_SetString(PyExc_ValueError, "rows, cols, samples and passes must be >= 0");
        return NULL;
    }
    for (int k = 0; k < N_STATS; ++k)
        if (at[k] < 0 || at[k] >= N_STATS) {
            PyErr_SetString(PyExc_ValueError, "column positions must lie in [0, 9)");
            return NULL;
        }
    double *weights = PyMem_RawMalloc(4 * (size_t)(rows ? rows : 1) * sizeof(double));
    if (weights == NULL)
        return PyErr_NoMemory();
    const float *bias = (const float *)(uintptr_t)bias_address;
    double *sums = (double *)(uintptr_t)sums_address;
    float *out = (float *)(uintptr_t)out_address;
    long long nonfinite = 0;
    BEGIN_ALLOW_THREADS_IF(rows * cols >= RELEASE_GIL_ELEMENTS)
    weight_stats((const float *)(uintptr_t)w_address, (float *)(uintptr_t)previous_address, rows, cols, has_previous,
                 weights);
    /* NaN also stands for "not defined" (no bias, no previous snapshot, no samples): only defined values count. */
    const int defined[N_STATS] = {1, 1, 1, has_previous, bias != NULL, samples > 0, samples > 0, samples > 0,
                                  passes > 0};
    for (Py_ssize_t r = 0; r < rows; ++r) {
        double value[N_STATS];
        value[W_MEAN] = weights[r];
        value[W_STD] = weights[rows + r];
        value[W_NORM] = weights[2 * rows + r];
        value[W_STEP] = weights[3 * rows + r];
        value[BIAS] = bias ? bias[r] : NAN;
        if (samples) {
            double mean = sums[r] / samples, variance = sums[rows + r] / samples - mean * mean;
            value[ACT_MEAN] = mean;
            value[ACT_STD] = variance < 0 ? 0.0 : sqrt(variance); /* rounding below 0 is 0; NaN stays NaN */
            value[ACT_RATE] = sums[2 * rows + r] / samples;
        } else {
            value[ACT_MEAN] = value[ACT_STD] = value[ACT_RATE] = NAN;
        }
        value[GRAD_NORM] = passes ? sqrt(sums[3 * rows + r] / passes) : NAN;
        for (int k = 0; k < N_STATS; ++k) {
            float stored = (float)value[k];
            out[r * N_STATS + at[k]] = stored;
            nonfinite += defined[k] && !isfinite(stored);
        }
    }
    memset(sums, 0, 4 * (size_t)rows * sizeof(double));
    END_ALLOW_THREADS_IF
    PyMem_RawFree(weights);
    return PyLong_FromLongLong(nonfinite);
}

/* ---- Hooks in C ---------------------------------------------------------------------------------------------
 * A Tap is a forward hook (module, inputs, output) or a tensor hook (grad) that takes the fast path itself, so the
 * training step pays for no Python frame: on the paper-scale model the hooks' Python bodies cost as much as the
 * reductions. Anything it does not take (not a CPU float32 contiguous tensor of the expected shape) goes to the
 * Python fallback it was built with, which holds the torch path. */

enum { TAP_ROWS = 0, TAP_PLANES = 1, TAP_GRADIENT = 2 };

typedef struct {
    PyObject_HEAD
    PyObject *fallback;
    double *sums;
    Py_ssize_t channels;
    int kind;
    int ndim;        /* a conv's batched output rank (its weight's rank); an unbatched output goes to the fallback */
    long long count; /* samples (activations) or backward passes (gradients) the tap has added */
} Tap;

static PyObject *TensorType, *Float32, *Strided, *IsGradEnabled, *Detached, *Same;
static PyObject *s_training, *s_dtype, *s_layout, *s_is_cpu, *s_is_contiguous, *s_shape, *s_data_ptr;

/* The size of a shape tuple's dimension, or -1 with an exception set. */
static Py_ssize_t dimension(PyObject *shape, Py_ssize_t index)
{
    return PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, index));
}

/* 1: t is a CPU, strided, contiguous float32 tensor, and its address, shape (a new reference) and element count are
 * filled in; 0: it is not; -1: an exception is set. */
static int float32_block(PyObject *t, uintptr_t *address, PyObject **shape, Py_ssize_t *numel)
{
    PyObject *names[] = {s_dtype, s_layout, s_is_cpu};
    PyObject *wanted[] = {Float32, Strided, Py_True};
    if (!PyObject_TypeCheck(t, (PyTypeObject *)TensorType))
        return 0;
    for (int i = 0; i < 3; ++i) {
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

/* 1 when the tap took the call, 0 when the fallback must, -1 on error. */
static int take_gradient(Tap *self, PyObject *grad)
{
    uintptr_t address;
    PyObject *shape = NULL;
    Py_ssize_t numel;
    int found = float32_block(grad, &address, &shape, &numel);
    if (found <= 0)
        return found;
    Py_ssize_t first = PyTuple_GET_SIZE(shape) ? dimension(shape, 0) : 0;
    Py_DECREF(shape);
    if (first != self->channels || numel % self->channels)
        return 0;
    Py_ssize_t cols = numel / self->channels;
    BEGIN_ALLOW_THREADS_IF(numel >= RELEASE_GIL_ELEMENTS)
    row_sumsq((const float *)address, self->channels, cols, self->sums);
    END_ALLOW_THREADS_IF
    self->count += 1;
    return 1;
}

static int take_activations(Tap *self, PyObject *module, PyObject *output)
{
    /* Only training steps count: evaluation passes would mix another distribution into the epoch's activity. */
    PyObject *training = PyObject_GetAttr(module, s_training);
    if (training == NULL)
        return -1;
    int is_training = PyObject_IsTrue(training);
    Py_DECREF(training);
    if (is_training <= 0)
        return is_training < 0 ? -1 : 1;
    PyObject *enabled = PyObject_CallNoArgs(IsGradEnabled);
    if (enabled == NULL)
        return -1;
    int grad_enabled = enabled == Py_True;
    Py_DECREF(enabled);
    if (!grad_enabled)
        return 1;
    uintptr_t address;
    PyObject *shape = NULL;
    Py_ssize_t numel;
    int found = float32_block(output, &address, &shape, &numel);
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
    if (inner <= 0)
        return 0;
    BEGIN_ALLOW_THREADS_IF(numel >= RELEASE_GIL_ELEMENTS)
    if (inner == 1)
        activations_rows((const float *)address, outer, self->channels, self->sums);
    else
        activations_channels((const float *)address, outer, self->channels, inner, self->sums);
    END_ALLOW_THREADS_IF
    self->count += outer * inner;
    return 1;
}

static PyObject *tap_call(Tap *self, PyObject *args, PyObject *kwargs)
{
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    int taken = 0;
    if (kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0) {
        if (self->kind == TAP_GRADIENT && nargs == 1)
            taken = take_gradient(self, PyTuple_GET_ITEM(args, 0));
        else if (self->kind != TAP_GRADIENT && nargs == 3)
            taken = take_activations(self, PyTuple_GET_ITEM(args, 0), PyTuple_GET_ITEM(args, 2));
    }
    if (taken < 0)
        return NULL;
    if (taken)
        Py_RETURN_NONE;
    return PyObject_Call(self->fallback, args, kwargs);
}

static int tap_init(Tap *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"kind", "channels", "sums", "fallback", "ndim", NULL};
    unsigned long long sums;
    PyObject *fallback;
    self->ndim = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "inKO|i", keywords, &self->kind, &self->channels, &sums, &fallback,
                                     &self->ndim))
        return -1;
    if (TensorType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "call _fastpath.setup(...) before building a Tap");
        return -1;
    }
    if (self->kind < TAP_ROWS || self->kind > TAP_GRADIENT || self->channels <= 0 || !PyCallable_Check(fallback)
        || (self->kind == TAP_PLANES && self->ndim < 3)) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0, 1 or 2, channels > 0, fallback callable, ndim >= 3 for 1");
        return -1;
    }
    self->sums = (double *)(uintptr_t)sums;
    self->count = 0;
    Py_INCREF(fallback);
    Py_XSETREF(self->fallback, fallback);
    return 0;
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
    {"__reduce__", (PyCFunction)tap_reduce, METH_NOARGS, "A detached, do-nothing hook in the copy."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef tap_members[] = {
    {"count", T_LONGLONG, offsetof(Tap, count), 0, "samples or backward passes added since it was last zeroed"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mlflow_flux._fastpath.Tap",
    .tp_doc = "Tap(kind, channels, sums, fallback, ndim=0): a hook adding into float64 sums at address `sums`; "
              "kind 0: a Linear's outputs, 1: a conv's batched outputs of rank ndim (forward hooks), 2: weight "
              "gradients (tensor hook). Calls it cannot take go to fallback.",
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

/* A module's forward, wrapped: the original runs, then its tap sees (module, args, output). The recorder puts it in
 * the module's instance dict instead of registering a forward hook, because any forward hook sends every call of
 * the module through nn.Module's slow path (about 2.5% of the paper-scale step, measured). A copy (deepcopy or
 * pickle) reduces to the original forward, so a copied model is a plain one bound to the copy. */
typedef struct {
    PyObject_HEAD
    PyObject *original;
    PyObject *module;
    PyObject *tap;
    int active;
} Forward;

static PyObject *forward_call(Forward *self, PyObject *args, PyObject *kwargs)
{
    PyObject *output = PyObject_Call(self->original, args, kwargs);
    if (output == NULL || !self->active)
        return output;
    PyObject *result = PyObject_CallFunctionObjArgs(self->tap, self->module, args, output, NULL);
    if (result == NULL) {
        Py_DECREF(output);
        return NULL;
    }
    Py_DECREF(result);
    return output;
}

static int forward_init(Forward *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"original", "module", "tap", NULL};
    PyObject *original, *module, *tap;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO", keywords, &original, &module, &tap))
        return -1;
    if (!PyCallable_Check(original) || !PyCallable_Check(tap)) {
        PyErr_SetString(PyExc_TypeError, "original and tap must be callable");
        return -1;
    }
    Py_INCREF(original);
    Py_XSETREF(self->original, original);
    Py_INCREF(module);
    Py_XSETREF(self->module, module);
    Py_INCREF(tap);
    Py_XSETREF(self->tap, tap);
    self->active = 1;
    return 0;
}

static PyObject *forward_deactivate(Forward *self, PyObject *unused)
{
    self->active = 0; /* from now on a plain pass-through, wherever a reference to it still lives */
    Py_RETURN_NONE;
}

static PyObject *forward_reduce(Forward *self, PyObject *unused)
{
    return Py_BuildValue("(O(O))", Same, self->original);
}

static int forward_traverse(Forward *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->module);
    Py_VISIT(self->tap);
    return 0;
}

static int forward_clear(Forward *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->module);
    Py_CLEAR(self->tap);
    return 0;
}

static void forward_dealloc(Forward *self)
{
    PyObject_GC_UnTrack(self);
    forward_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef forward_methods[] = {
    {"deactivate", (PyCFunction)forward_deactivate, METH_NOARGS, "Stop calling the tap; only pass calls through."},
    {"__reduce__", (PyCFunction)forward_reduce, METH_NOARGS, "The original forward, in the copy."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef forward_members[] = {
    {"original", T_OBJECT, offsetof(Forward, original), READONLY, "the wrapped forward"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ForwardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mlflow_flux._fastpath.Forward",
    .tp_doc = "Forward(original, module, tap): calls original(*args, **kwargs), then tap(module, args, output).",
    .tp_basicsize = sizeof(Forward),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)forward_init,
    .tp_call = (ternaryfunc)forward_call,
    .tp_traverse = (traverseproc)forward_traverse,
    .tp_clear = (inquiry)forward_clear,
    .tp_dealloc = (destructor)forward_dealloc,
    .tp_methods = forward_methods,
    .tp_members = forward_members,
};

static PyObject *setup(PyObject *self, PyObject *args)
{
    PyObject *tensor_type, *float32, *strided, *is_grad_enabled, *detached, *same;
    if (!PyArg_ParseTuple(args, "O!OOOOO", &PyType_Type, &tensor_type, &float32, &strided, &is_grad_enabled,
                          &detached, &same))
        return NULL;
    PyObject *given[] = {tensor_type, float32, strided, is_grad_enabled, detached, same};
    PyObject **slots[] = {&TensorType, &Float32, &Strided, &IsGradEnabled, &Detached, &Same};
    for (int i = 0; i < 6; ++i) {
        Py_INCREF(given[i]);
        Py_XSETREF(*slots[i], given[i]);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"layer_statistics", layer_statistics, METH_VARARGS,
     "layer_statistics(w, previous, rows, cols, has_previous, bias, sums, samples, passes, out, positions): one "
     "layer's snapshot. Weight mean, population std, L2 norm and step from previous (which then takes w's values) of "
     "a float32 (rows, cols) block, bias from a float32 vector (address 0: none), activation mean, std and rate and "
     "gradient RMS norm from the float64 (4, rows) sums (then zeroed), written as float32 into rows of 9 at `out` in "
     "the column positions given for (w_mean, w_std, w_norm, w_step, bias, act_mean, act_std, act_rate, grad_norm). "
     "Returns how many defined values are not finite."},
    {"setup", setup, METH_VARARGS,
     "setup(torch.Tensor, torch.float32, torch.strided, torch.is_grad_enabled, detached, same): what the taps "
     "compare against, the factory a copied tap reduces to, and the identity a copied Forward reduces through."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    const char *names[] = {"training", "dtype", "layout", "is_cpu", "is_contiguous", "shape", "data_ptr"};
    PyObject **slots[] = {&s_training, &s_dtype, &s_layout, &s_is_cpu, &s_is_contiguous, &s_shape, &s_data_ptr};
    for (int i = 0; i < 7; ++i)
        if ((*slots[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return NULL;
    if (PyType_Ready(&TapType) < 0 || PyType_Ready(&ForwardType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* AddObjectRef (3.10+) takes its own reference, so a failure part-way leaves no count to undo. */
    if (PyModule_AddObjectRef(m, "Tap", (PyObject *)&TapType) < 0
        || PyModule_AddObjectRef(m, "Forward", (PyObject *)&ForwardType) < 0
        || PyModule_AddStringConstant(m, "source_sha256", FASTPATH_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
