/* Record boundaries of a chunk of a pcap file: the one per-packet loop of ingest, compiled.
 *
 * pcap records are variable-length and each record's length is only known by reading the one before it, so this
 * walk cannot be vectorised with numpy; in Python it is about a fifth of an ingest run. Everything after it
 * (header parsing, flows) stays vectorised numpy. pclip_jax/data/capture.py has the same loop in Python and
 * uses it when this module was not built (no C compiler at install time); tests/test_capture.py checks that both
 * give the same offsets on real captures.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static uint32_t read_u32(const unsigned char *p, int big_endian) {
    if (big_endian)
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | (uint32_t)p[0];
}

/* record_offsets(buffer, n, big_endian) -> (bytes of int64 offsets, stop)
 *
 * Walks 16-byte pcap record headers from offset 0 of buffer[:n]: a record is taken when all of it lies within n
 * bytes; stop is the offset of the first record not taken (a partial record the next chunk completes, or n).
 */
static PyObject *record_offsets(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t n;
    int big_endian;
    if (!PyArg_ParseTuple(args, "y*np", &view, &n, &big_endian))
        return NULL;
    if (n < 0 || n > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "record_offsets: n outside the buffer");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    /* A record is at least 16 bytes: n / 16 + 1 offsets is an upper bound. */
    Py_ssize_t cap = n / 16 + 1;
    int64_t *out = (int64_t *)PyMem_Malloc((size_t)cap * sizeof(int64_t));
    if (out == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t count = 0;
    int64_t pos = 0;
    Py_BEGIN_ALLOW_THREADS
    while (pos + 16 <= (int64_t)n) {
        int64_t next = pos + 16 + (int64_t)read_u32(data + pos + 8, big_endian);
        if (next > (int64_t)n)
            break;
        out[count++] = pos;
        pos = next;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *offsets = PyBytes_FromStringAndSize((const char *)out, count * (Py_ssize_t)sizeof(int64_t));
    PyMem_Free(out);
    if (offsets == NULL)
        return NULL;
    return Py_BuildValue("(NL)", offsets, (long long)pos);
}

static PyMethodDef methods[] = {
    {"record_offsets", record_offsets, METH_VARARGS,
     "record_offsets(buffer, n, big_endian) -> (int64 offsets as bytes, stop offset)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pcapwalk", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pcapwalk(void) { return PyModule_Create(&module); }
