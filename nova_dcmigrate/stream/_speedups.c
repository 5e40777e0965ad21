/*
 * Native per-page work of the dcmigrate agents (optional).
 *
 * Why: at 10 Gbit/s an agent sees ~300k pages/s, and a Python call per
 * page caps it far below that.  Each function here consumes a run of
 * PAGE|CONTINUE and ZERO|CONTINUE records of one RAM block straight from
 * the stream reader's buffer and does one visitor's work for all of them.
 * It stops *before* any record it does not take (another record type, an
 * incomplete record, an offset past the block, a non-zero fill byte, or a
 * page that needs Python's judgement); the pure-Python reader then handles
 * that one record exactly as without this module (same errors, same
 * visitor calls).  nova_dcmigrate/stream/fastpath.py selects this module
 * or the pure-Python code; both must give identical results (property
 * tests run both).
 *
 * Digests are xxh3-128 with the migration's seed, in canonical
 * (big-endian) byte order: what python-xxhash's xxh3_128_digest returns.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define PAGE_SIZE 4096
#define PAGE_BITS 12
#define FLAG_ZERO 0x02
#define FLAG_PAGE 0x08
#define FLAG_CONTINUE 0x20
#define PAGE_CONT (FLAG_PAGE | FLAG_CONTINUE)
#define ZERO_CONT (FLAG_ZERO | FLAG_CONTINUE)
#define PAGE_REC (8 + PAGE_SIZE)
#define ZERO_REC 9
#define DIGEST_LEN 16

/* Store page states (agent/page_store.py). */
#define ST_ZERO 1
#define ST_DATA 2
/* Source filter flags (agent/plan.py); SENT: the destination holds what
 * this source sent. */
#define FL_REMOTE 2
#define FL_SENT 3

enum rec_kind { REC_STOP = 0, REC_PAGE = 1, REC_ZERO = 2 };

static inline uint64_t
load_be64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

static inline void
store_be64(unsigned char *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
}

/* The record at buf[pos]: a complete, valid CONTINUE page or zero record
 * inside the block?  Sets *page. */
static inline enum rec_kind
next_record(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end,
            uint64_t used, uint64_t *page)
{
    uint64_t word, flags, addr;

    if (end - pos < 8)
        return REC_STOP;
    word = load_be64(buf + pos);
    flags = word & 0xFFF;
    addr = word ^ flags;
    if (addr >= used)
        return REC_STOP;
    *page = addr >> PAGE_BITS;
    if (flags == PAGE_CONT) {
        if (end - pos < PAGE_REC)
            return REC_STOP;
        return REC_PAGE;
    }
    if (flags == ZERO_CONT) {
        if (end - pos < ZERO_REC || buf[pos + 8] != 0)
            return REC_STOP;
        return REC_ZERO;
    }
    return REC_STOP;
}

static inline void
digest_into(unsigned char *out, const unsigned char *data, uint64_t seed)
{
    XXH128_hash_t h = XXH3_128bits_withSeed(data, PAGE_SIZE, seed);
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, h);
    memcpy(out, canon.digest, DIGEST_LEN);
}

/* Buffer helpers: every buffer is released by release_all. */
#define MAX_BUFS 8
typedef struct {
    Py_buffer b[MAX_BUFS];
    int n;
} bufset;

static int
get_buf(bufset *s, PyObject *obj, int writable, Py_ssize_t min_len,
        const char *what)
{
    Py_buffer *v = &s->b[s->n];
    if (PyObject_GetBuffer(obj, v, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE)
            < 0)
        return -1;
    s->n++;
    if (v->len < min_len) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need %zd", what,
                     v->len, min_len);
        return -1;
    }
    return 0;
}

static void
release_all(bufset *s)
{
    while (s->n > 0)
        PyBuffer_Release(&s->b[--s->n]);
}

/* Page index must fit the per-page tables of the block. */
static int
check_tables(uint64_t used, Py_ssize_t npages_have, const char *what)
{
    uint64_t need = (used + PAGE_SIZE - 1) >> PAGE_BITS;
    if ((uint64_t)npages_have < need) {
        PyErr_Format(PyExc_ValueError, "%s too small for the block", what);
        return -1;
    }
    return 0;
}

/* A destination page store's per-page tables (agent/page_store.py) and
 * what the current attempt writes into them. */
typedef struct {
    unsigned char *dg;          /* digest of each page (DIGEST_LEN) */
    unsigned char *st;          /* ST_* state of each page */
    uint16_t *att;              /* attempt that last sent each page */
    uint16_t attempt;
    uint64_t seed;
    const char *zero;           /* digest of a zero page */
} page_tables;

/* Change of the store's data/zero/held page counts. */
typedef struct {
    Py_ssize_t data, zero, held;
} store_delta;

/* Record one PAGE (bytes at src) or ZERO record in the store's tables:
 * attempt, digest, state, and the state change counted into *d.  Why
 * shared: store_records and track_records must keep the store's
 * bookkeeping identical and differ only in where the bytes live (copied,
 * or in QEMU's held RAM), which they handle from the returned previous
 * state. */
static inline unsigned char
record_page(const page_tables *t, enum rec_kind k, uint64_t page,
            const unsigned char *src, store_delta *d)
{
    unsigned char old = t->st[page];

    t->att[page] = t->attempt;
    if (k == REC_PAGE) {
        digest_into(t->dg + page * DIGEST_LEN, src, t->seed);
        if (old != ST_DATA) {
            if (old == ST_ZERO)
                d->zero--;
            else
                d->held++;
            d->data++;
            t->st[page] = ST_DATA;
        }
    } else if (old != ST_ZERO) {
        if (old == ST_DATA)
            d->data--;
        else
            d->held++;
        d->zero++;
        t->st[page] = ST_ZERO;
        memcpy(t->dg + page * DIGEST_LEN, t->zero, DIGEST_LEN);
    }
    return old;
}

PyDoc_STRVAR(scan_doc,
"scan_records(buf, pos, end, used) -> (pos, pages, zeros)\n\n"
"Skip a run of valid CONTINUE records (parse-only visitor).");

static PyObject *
scan_records(PyObject *self, PyObject *args)
{
    PyObject *bufobj;
    Py_ssize_t pos, end;
    unsigned long long used;
    bufset s = {.n = 0};
    Py_ssize_t pages = 0, zeros = 0;
    uint64_t page;
    enum rec_kind k;

    if (!PyArg_ParseTuple(args, "OnnK", &bufobj, &pos, &end, &used))
        return NULL;
    if (get_buf(&s, bufobj, 0, end, "buf") < 0)
        goto fail;
    {
        const unsigned char *buf = s.b[0].buf;
        while ((k = next_record(buf, pos, end, used, &page)) != REC_STOP) {
            if (k == REC_PAGE) {
                pos += PAGE_REC;
                pages++;
            } else {
                pos += ZERO_REC;
                zeros++;
            }
        }
    }
    release_all(&s);
    return Py_BuildValue("nnn", pos, pages, zeros);
fail:
    release_all(&s);
    return NULL;
}

PyDoc_STRVAR(digest_doc,
"digest_records(buf, pos, end, used, digests, seed, zero_digest)\n"
"    -> (pos, pages, zeros)\n\n"
"Source tracker: remember the digest of every page sent.");

static PyObject *
digest_records(PyObject *self, PyObject *args)
{
    PyObject *bufobj, *dgobj;
    Py_ssize_t pos, end;
    unsigned long long used, seed;
    const char *zero;
    Py_ssize_t zero_len;
    bufset s = {.n = 0};
    Py_ssize_t pages = 0, zeros = 0;
    uint64_t page;
    enum rec_kind k;

    if (!PyArg_ParseTuple(args, "OnnKOKy#", &bufobj, &pos, &end, &used,
                          &dgobj, &seed, &zero, &zero_len))
        return NULL;
    if (zero_len != DIGEST_LEN) {
        PyErr_SetString(PyExc_ValueError, "zero_digest must be 16 bytes");
        return NULL;
    }
    if (get_buf(&s, bufobj, 0, end, "buf") < 0 ||
            get_buf(&s, dgobj, 1, 0, "digests") < 0 ||
            check_tables(used, s.b[1].len / DIGEST_LEN, "digests") < 0)
        goto fail;
    {
        const unsigned char *buf = s.b[0].buf;
        unsigned char *dg = s.b[1].buf;
        Py_BEGIN_ALLOW_THREADS
        while ((k = next_record(buf, pos, end, used, &page)) != REC_STOP) {
            if (k == REC_PAGE) {
                digest_into(dg + page * DIGEST_LEN, buf + pos + 8, seed);
                pos += PAGE_REC;
                pages++;
            } else {
                memcpy(dg + page * DIGEST_LEN, zero, DIGEST_LEN);
                pos += ZERO_REC;
                zeros++;
            }
        }
        Py_END_ALLOW_THREADS
    }
    release_all(&s);
    return Py_BuildValue("nnn", pos, pages, zeros);
fail:
    release_all(&s);
    return NULL;
}

PyDoc_STRVAR(store_doc,
"store_records(buf, pos, end, used, data, digests, state, attempts,\n"
"              attempt, seed, zero_digest)\n"
"    -> (pos, pages, zeros, d_data, d_zero, d_held)\n\n"
"Destination page store: copy every page, its digest, state and attempt;\n"
"returns the change of the store's data/zero/held page counts.");

static PyObject *
store_records(PyObject *self, PyObject *args)
{
    PyObject *bufobj, *dataobj, *dgobj, *stobj, *attobj;
    Py_ssize_t pos, end;
    unsigned long long used, seed;
    unsigned int attempt;
    const char *zero;
    Py_ssize_t zero_len;
    bufset s = {.n = 0};
    Py_ssize_t pages = 0, zeros = 0;
    store_delta d = {0, 0, 0};
    uint64_t page;
    enum rec_kind k;

    if (!PyArg_ParseTuple(args, "OnnKOOOOIKy#", &bufobj, &pos, &end, &used,
                          &dataobj, &dgobj, &stobj, &attobj, &attempt, &seed,
                          &zero, &zero_len))
        return NULL;
    if (zero_len != DIGEST_LEN || attempt > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "bad zero_digest or attempt");
        return NULL;
    }
    if (get_buf(&s, bufobj, 0, end, "buf") < 0 ||
            get_buf(&s, dataobj, 1, 0, "data") < 0 ||
            get_buf(&s, dgobj, 1, 0, "digests") < 0 ||
            get_buf(&s, stobj, 1, 0, "state") < 0 ||
            get_buf(&s, attobj, 1, 0, "attempts") < 0 ||
            check_tables(used, s.b[1].len / PAGE_SIZE, "data") < 0 ||
            check_tables(used, s.b[2].len / DIGEST_LEN, "digests") < 0 ||
            check_tables(used, s.b[3].len, "state") < 0 ||
            check_tables(used, s.b[4].len / 2, "attempts") < 0)
        goto fail;
    {
        const unsigned char *buf = s.b[0].buf;
        unsigned char *data = s.b[1].buf;
        const page_tables t = {s.b[2].buf, s.b[3].buf, s.b[4].buf,
                               (uint16_t)attempt, seed, zero};
        /* The GIL stays held: a concurrent PageStore.close() must not
         * find its mmap exported. */
        while ((k = next_record(buf, pos, end, used, &page)) != REC_STOP) {
            const unsigned char *src = buf + pos + 8;
            unsigned char old = record_page(&t, k, page, src, &d);
            if (k == REC_PAGE) {
                memcpy(data + page * PAGE_SIZE, src, PAGE_SIZE);
                pos += PAGE_REC;
                pages++;
            } else {
                if (old == ST_DATA)
                    memset(data + page * PAGE_SIZE, 0, PAGE_SIZE);
                pos += ZERO_REC;
                zeros++;
            }
        }
    }
    release_all(&s);
    return Py_BuildValue("nnnnnn", pos, pages, zeros, d.data, d.zero,
                         d.held);
fail:
    release_all(&s);
    return NULL;
}

PyDoc_STRVAR(track_doc,
"track_records(buf, pos, end, used, digests, state, attempts, where,\n"
"              ring, ring_count, block_index, attempt, loc, seed,\n"
"              zero_digest)\n"
"    -> (pos, pages, zeros, d_data, d_zero, d_held, d_remote, ring_count)\n"
"\n"
"Destination page store, block held in QEMU's RAM (location loc != 0):\n"
"record every page's digest, state, attempt and location without\n"
"copying it, and append (block_index << 32 | page) of every page to the\n"
"ring of recently forwarded pages (slot ring_count % len).  Stops\n"
"before a record whose page is DATA in another location (Python moves\n"
"it: references of other held RAMs change).  Returns the change of the\n"
"store's data/zero/held page counts and of the pages in location loc.");

static PyObject *
track_records(PyObject *self, PyObject *args)
{
    PyObject *bufobj, *dgobj, *stobj, *attobj, *whobj, *ringobj;
    Py_ssize_t pos, end;
    unsigned long long used, seed, ring_count;
    unsigned int attempt, loc, block_index;
    const char *zero;
    Py_ssize_t zero_len;
    bufset s = {.n = 0};
    Py_ssize_t pages = 0, zeros = 0, d_remote = 0;
    store_delta d = {0, 0, 0};
    uint64_t page;
    enum rec_kind k;

    if (!PyArg_ParseTuple(args, "OnnKOOOOOKIIIKy#", &bufobj, &pos, &end,
                          &used, &dgobj, &stobj, &attobj, &whobj, &ringobj,
                          &ring_count, &block_index, &attempt, &loc, &seed,
                          &zero, &zero_len))
        return NULL;
    if (zero_len != DIGEST_LEN || attempt > 0xFFFF || loc == 0 ||
            loc > 0xFF) {
        PyErr_SetString(PyExc_ValueError,
                        "bad zero_digest, attempt or location");
        return NULL;
    }
    if (get_buf(&s, bufobj, 0, end, "buf") < 0 ||
            get_buf(&s, dgobj, 1, 0, "digests") < 0 ||
            get_buf(&s, stobj, 1, 0, "state") < 0 ||
            get_buf(&s, attobj, 1, 0, "attempts") < 0 ||
            get_buf(&s, whobj, 1, 0, "where") < 0 ||
            get_buf(&s, ringobj, 1, 8, "ring") < 0 ||
            check_tables(used, s.b[1].len / DIGEST_LEN, "digests") < 0 ||
            check_tables(used, s.b[2].len, "state") < 0 ||
            check_tables(used, s.b[3].len / 2, "attempts") < 0 ||
            check_tables(used, s.b[4].len, "where") < 0)
        goto fail;
    {
        const unsigned char *buf = s.b[0].buf;
        const page_tables t = {s.b[1].buf, s.b[2].buf, s.b[3].buf,
                               (uint16_t)attempt, seed, zero};
        unsigned char *wh = s.b[4].buf;
        uint64_t *ring = s.b[5].buf;
        uint64_t nring = (uint64_t)(s.b[5].len / 8);
        uint64_t tag = (uint64_t)block_index << 32;

        while ((k = next_record(buf, pos, end, used, &page)) != REC_STOP) {
            unsigned char old;
            if (t.st[page] == ST_DATA && wh[page] != loc)
                break;
            old = record_page(&t, k, page, buf + pos + 8, &d);
            if (k == REC_PAGE) {
                if (old != ST_DATA) {
                    d_remote++;
                    wh[page] = (unsigned char)loc;
                }
                ring[ring_count % nring] = tag | page;
                ring_count++;
                pos += PAGE_REC;
                pages++;
            } else {
                if (old == ST_DATA) {
                    d_remote--;
                    wh[page] = 0;
                }
                pos += ZERO_REC;
                zeros++;
            }
        }
    }
    release_all(&s);
    return Py_BuildValue("nnnnnnnK", pos, pages, zeros, d.data, d.zero,
                         d.held, d_remote, ring_count);
fail:
    release_all(&s);
    return NULL;
}

/* Append one re-encoded record to out (a bytearray). */
static int
emit(PyObject *out, uint64_t word, const char *idstr, Py_ssize_t idlen,
     const unsigned char *data, Py_ssize_t dlen)
{
    Py_ssize_t old = PyByteArray_GET_SIZE(out);
    Py_ssize_t add = 8 + idlen + dlen;
    unsigned char *p;

    if (PyByteArray_Resize(out, old + add) < 0)
        return -1;
    p = (unsigned char *)PyByteArray_AS_STRING(out) + old;
    store_be64(p, word);
    p += 8;
    if (idlen) {
        memcpy(p, idstr, idlen);
        p += idlen;
    }
    memcpy(p, data, dlen);
    return 0;
}

static int
forget(PyObject *assist, uint64_t g)
{
    PyObject *key;
    int rc = 0;

    if (PyDict_GET_SIZE(assist) == 0)
        return 0;
    key = PyLong_FromUnsignedLongLong(g);
    if (key == NULL)
        return -1;
    if (PyDict_Contains(assist, key) == 1)
        rc = PyDict_DelItem(assist, key);
    Py_DECREF(key);
    return rc;
}

PyDoc_STRVAR(filter_doc,
"filter_records(buf, pos, end, block, base, covered, ncovered, total,\n"
"               flags, expected, seed, zero_digest, frontier, assist,\n"
"               assist_budget, lowest_skip, out, idstr, cont)\n"
"    -> (pos, pages, zeros, ncovered, position, dropped, forwarded_held,\n"
"        kept, lowest_skip, emitted)\n\n"
"Source of a redirected attempt: drop the pages the new destination will\n"
"hold, re-encode the rest into out.  position is -1 when no page was\n"
"newly covered.  A held page skipped above the frontier in the first\n"
"pass is kept in assist (g -> (block, page, bytes)) while it has fewer\n"
"than assist_budget entries, else it lowers lowest_skip.  The caller\n"
"holds the frontier lock: frontier and assist do not change under us.");

/* Keep a skipped held page for a later raise of the frontier. */
static int
keep(PyObject *assist, uint64_t g, PyObject *block, uint64_t page,
     const unsigned char *src)
{
    PyObject *key, *value;
    int rc;

    key = PyLong_FromUnsignedLongLong(g);
    if (key == NULL)
        return -1;
    value = Py_BuildValue("(OKy#)", block, (unsigned long long)page,
                          (const char *)src, (Py_ssize_t)PAGE_SIZE);
    if (value == NULL) {
        Py_DECREF(key);
        return -1;
    }
    rc = PyDict_SetItem(assist, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

#define COVER() do { \
        if (newly) { \
            cov[page] = 1; \
            ncovered++; \
            position = (long long)g; \
        } \
    } while (0)

static PyObject *
filter_records(PyObject *self, PyObject *args)
{
    PyObject *bufobj, *block, *usedobj, *covobj, *flobj, *expobj, *assist,
        *out;
    Py_ssize_t pos, end, ncovered, total, assist_budget;
    unsigned long long used, base, seed, frontier, lowest_skip;
    const char *zero, *idstr;
    Py_ssize_t zero_len, idlen;
    int cont;
    bufset s = {.n = 0};
    Py_ssize_t pages = 0, zeros = 0, dropped = 0, fwd = 0, kept = 0;
    long long position = -1;
    int emitted = 0;
    uint64_t page;
    enum rec_kind k;

    if (!PyArg_ParseTuple(args, "OnnOKOnnOOKy#KOnKOy#p", &bufobj, &pos, &end,
                          &block, &base, &covobj, &ncovered, &total, &flobj,
                          &expobj, &seed, &zero, &zero_len, &frontier,
                          &assist, &assist_budget, &lowest_skip, &out,
                          &idstr, &idlen, &cont))
        return NULL;
    if (zero_len != DIGEST_LEN || !PyByteArray_Check(out) ||
            !PyDict_Check(assist)) {
        PyErr_SetString(PyExc_TypeError, "bad filter_records arguments");
        return NULL;
    }
    usedobj = PyObject_GetAttrString(block, "used_length");
    if (usedobj == NULL)
        return NULL;
    used = PyLong_AsUnsignedLongLong(usedobj);
    Py_DECREF(usedobj);
    if (PyErr_Occurred())
        return NULL;
    if (get_buf(&s, bufobj, 0, end, "buf") < 0 ||
            get_buf(&s, covobj, 1, 0, "covered") < 0 ||
            get_buf(&s, flobj, 1, 0, "flags") < 0 ||
            get_buf(&s, expobj, 1, 0, "expected") < 0 ||
            check_tables(used, s.b[1].len, "covered") < 0 ||
            check_tables(used, s.b[2].len, "flags") < 0 ||
            check_tables(used, s.b[3].len / DIGEST_LEN, "expected") < 0)
        goto fail;
    {
        const unsigned char *buf = s.b[0].buf;
        unsigned char *cov = s.b[1].buf;
        unsigned char *fl = s.b[2].buf;
        unsigned char *exp = s.b[3].buf;
        unsigned char d[DIGEST_LEN];

        while ((k = next_record(buf, pos, end, used, &page)) != REC_STOP) {
            uint64_t g = base + page;
            unsigned char *e = exp + page * DIGEST_LEN;
            /* First pass: covering a page may end it (Python's order:
             * cover, then decide). */
            int newly = !cov[page] && ncovered < total;
            int pass1_done = ncovered + newly >= total;

            if (k == REC_PAGE) {
                const unsigned char *src = buf + pos + 8;
                unsigned char flag = fl[page];
                digest_into(d, src, seed);
                if (flag && memcmp(e, d, DIGEST_LEN) == 0) {
                    int send = 0;
                    if (flag == FL_REMOTE && !pass1_done) {
                        if (g < frontier) {
                            send = 1;
                        } else if (PyDict_GET_SIZE(assist) < assist_budget) {
                            if (keep(assist, g, block, page, src) < 0)
                                goto fail;
                            kept++;
                        } else if (g < lowest_skip) {
                            lowest_skip = g;
                        }
                    }
                    COVER();
                    if (!send) {
                        dropped++;
                        pos += PAGE_REC;
                        pages++;
                        continue;
                    }
                    fwd++;
                } else {
                    COVER();
                    if (forget(assist, g) < 0)
                        goto fail;
                }
                if (emit(out, (page << PAGE_BITS) | FLAG_PAGE |
                         (cont ? FLAG_CONTINUE : 0), idstr,
                         cont ? 0 : idlen, src, PAGE_SIZE) < 0)
                    goto fail;
                memcpy(e, d, DIGEST_LEN);
                pos += PAGE_REC;
                pages++;
            } else {
                static const unsigned char fill = 0;
                COVER();
                if (forget(assist, g) < 0)
                    goto fail;
                if (emit(out, (page << PAGE_BITS) | FLAG_ZERO |
                         (cont ? FLAG_CONTINUE : 0), idstr,
                         cont ? 0 : idlen, &fill, 1) < 0)
                    goto fail;
                memcpy(e, zero, DIGEST_LEN);
                pos += ZERO_REC;
                zeros++;
            }
            cont = 1;
            emitted = 1;
            fl[page] = FL_SENT;
        }
    }
    release_all(&s);
    return Py_BuildValue("nnnnLnnnKi", pos, pages, zeros, ncovered,
                         position, dropped, fwd, kept, lowest_skip, emitted);
fail:
    release_all(&s);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_records", scan_records, METH_VARARGS, scan_doc},
    {"digest_records", digest_records, METH_VARARGS, digest_doc},
    {"store_records", store_records, METH_VARARGS, store_doc},
    {"track_records", track_records, METH_VARARGS, track_doc},
    {"filter_records", filter_records, METH_VARARGS, filter_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups",
    "Native per-page work of the dcmigrate agents (see fastpath.py).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
