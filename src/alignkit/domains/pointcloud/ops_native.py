"""Compiled CPU loops for FPS, kNN and ball query (the ``"native"`` backend of :mod:`.ops`), and for the fused
batch norm passes of PointNet++ levels (:mod:`.models.grouped_norm`).

A small C source (below) is compiled once with the system C compiler (``$CC``, else ``cc``) into
``$ALIGNKIT_NATIVE_CACHE`` (default ``~/.cache/alignkit/native``), named by the hash of the source and
flags, and loaded with :mod:`ctypes`; the calls release the GIL. When no compiler works,
:func:`library` returns None and :mod:`.ops` uses its PyTorch path.

Same results as the PyTorch reference, by construction: every squared distance is
``d2 = ((dx * dx) + (dy * dy)) + (dz * dz)`` with ``dx = a_x - b_x``, each operation rounded in the
input dtype (float32 or float64; compiled with ``-ffp-contract=off``, so no fused multiply-add, and
``-fno-trapping-math``, which lets conditional selects vectorise without changing any result), which
is what the reference's separate elementwise kernels compute. Orders and ties:

- FPS: ``nearest = min(nearest, d2)``; the chosen point gets -1; the next is the first index of the
  maximum;
- kNN: ascending by ``(d2, index)`` (points are scanned in index order; a later equal distance
  never displaces an earlier one);
- ball query: the first ``k`` indices with ``d2 < r2`` in index order (the scan stops there), padded
  with the first; an empty ball gets the first index of the smallest ``d2`` in every slot.

Work is split over clouds (FPS) or queries (kNN, ball query) across ``threads`` POSIX threads.
The hot loops are built for AVX2 and a baseline x86-64 (GCC ``target_clones``) on Linux.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from alignkit.domains.pointcloud.native_norm_source import NORM_BODY

PRELUDE = r"""
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif
#define BLK 128
#define MAXT 64

typedef void (*span_fn)(void *, int64_t, int64_t);
typedef struct { span_fn fn; void *ctx; int64_t lo, hi; } span_t;
static void *run_span(void *a) { span_t *s = (span_t *)a; s->fn(s->ctx, s->lo, s->hi); return NULL; }

/* fn(ctx, lo, hi) over [0, n) in `threads` contiguous spans; a thread that cannot start runs inline. */
static void parallel(span_fn fn, void *ctx, int64_t n, int threads) {
    pthread_t th[MAXT]; span_t sp[MAXT]; int ok[MAXT];
    if (threads > MAXT) threads = MAXT;
    if (threads > n) threads = (int)n;
    if (threads <= 1) { fn(ctx, 0, n); return; }
    for (int t = 0; t < threads; t++) {
        sp[t].fn = fn; sp[t].ctx = ctx; sp[t].lo = n * t / threads; sp[t].hi = n * (t + 1) / threads;
    }
    for (int t = 1; t < threads; t++) ok[t] = pthread_create(&th[t], NULL, run_span, &sp[t]) == 0;
    run_span(&sp[0]);
    for (int t = 1; t < threads; t++) { if (ok[t]) pthread_join(th[t], NULL); else run_span(&sp[t]); }
}
typedef float vf32 __attribute__((vector_size(32)));
typedef int32_t vi32 __attribute__((vector_size(32)));
typedef double vf64 __attribute__((vector_size(32)));
typedef int64_t vi64 __attribute__((vector_size(32)));
"""

BODY = r"""
/* ---------------------------------------------------------------- FPS */
/* nearest[n] = min(nearest[n], d2(n)) for all n; returns max_n nearest[n] (W-lane vectors, then a tail). */
HOT static T NAME(fps_step)(const T *x, const T *y, const T *z, T *nearest, int64_t N, T cx, T cy, T cz) {
    VT vtop = (VT){0} - (T)INFINITY;
    int64_t n = 0;
    for (; n + W <= N; n += W) {
        VT vx, vy, vz, vn;
        memcpy(&vx, x + n, sizeof vx); memcpy(&vy, y + n, sizeof vy);
        memcpy(&vz, z + n, sizeof vz); memcpy(&vn, nearest + n, sizeof vn);
        VT dx = vx - cx, dy = vy - cy, dz = vz - cz;
        VT d = dx * dx; d = d + dy * dy; d = d + dz * dz;
        VI lt = vn < d;
        VT v = (VT)(((VI)vn & lt) | ((VI)d & ~lt));
        memcpy(nearest + n, &v, sizeof v);
        VI gt = v > vtop;
        vtop = (VT)(((VI)v & gt) | ((VI)vtop & ~gt));
    }
    T top = vtop[0];
    for (int l = 1; l < W; l++) top = vtop[l] > top ? vtop[l] : top;
    for (; n < N; n++) {
        T dx = x[n] - cx, dy = y[n] - cy, dz = z[n] - cz;
        T d = dx * dx; d = d + dy * dy; d = d + dz * dz;
        T v = nearest[n] < d ? nearest[n] : d;
        nearest[n] = v;
        top = v > top ? v : top;
    }
    return top;
}

typedef struct { const T *planes; int64_t B, N, npoint; const int64_t *start; int64_t *out; int failed; } NAME(fps_ctx);

static void NAME(fps_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(fps_ctx) *c = (NAME(fps_ctx) *)c_;
    const int64_t N = c->N, B = c->B;
    T *nearest = (T *)malloc(sizeof(T) * (size_t)N);
    if (!nearest) { c->failed = 1; return; }
    for (int64_t b = lo; b < hi; b++) {
        const T *x = c->planes + b * N, *y = x + B * N, *z = y + B * N;
        int64_t *out = c->out + b * c->npoint, last = c->start[b];
        for (int64_t n = 0; n < N; n++) nearest[n] = (T)INFINITY;
        for (int64_t s = 0;; s++) {
            out[s] = last;
            if (s + 1 == c->npoint) break;
            T top = NAME(fps_step)(x, y, z, nearest, N, x[last], y[last], z[last]);
            nearest[last] = (T)-1;
            int64_t n = 0;
            while (nearest[n] != top) n++;
            last = n;
        }
    }
    free(nearest);
}

int NAME(fps)(const T *planes, int64_t B, int64_t N, int64_t npoint, const int64_t *start, int64_t *out,
              int threads) {
    NAME(fps_ctx) c = {planes, B, N, npoint, start, out, 0};
    parallel(NAME(fps_span), &c, B, threads);
    return c.failed;
}

/* ---------------------------------------------------------------- neighbour search */
typedef struct {
    const T *query, *planes; int64_t B, M, N, k; T r2; int grid; int64_t *out; int failed;
} NAME(near_ctx);

HOT static void NAME(block)(const T *x, const T *y, const T *z, T qx, T qy, T qz, int64_t len, T *d) {
    for (int64_t j = 0; j < len; j++) {
        T dx = qx - x[j], dy = qy - y[j], dz = qz - z[j];
        T e = dx * dx; e = e + dy * dy; d[j] = e + dz * dz;
    }
}

/* Insert (e, id) into the list bd/bi (cnt <= k entries, ascending by (d2, index)). */
static inline void NAME(insert)(T *bd, int64_t *bi, int64_t *cnt, int64_t k, T e, int64_t id) {
    if (*cnt == k && !(e < bd[k - 1] || (e == bd[k - 1] && id < bi[k - 1]))) return;
    int64_t pos = *cnt < k ? (*cnt)++ : k - 1;
    while (pos > 0 && (bd[pos - 1] > e || (bd[pos - 1] == e && bi[pos - 1] > id))) {
        bd[pos] = bd[pos - 1]; bi[pos] = bi[pos - 1]; pos--;
    }
    bd[pos] = e; bi[pos] = id;
}

/* Uniform grid over one cloud: points counting-sorted by cell, index order kept inside a cell. Cell
   size h gives about 2 points per cell of the bounding box; a point's cell along axis a is
   clamp(floor((p_a - lo_a) / h), 0, res_a - 1). */
typedef struct { int64_t res[3], *start, *idx, *cell; double lo[3], h; T *x, *y, *z; } NAME(grid);

static void NAME(grid_build)(NAME(grid) *g, const T *x, const T *y, const T *z, int64_t N, int64_t maxcells) {
    const T *p[3] = {x, y, z};
    double ext[3], big = 0;
    for (int a = 0; a < 3; a++) {
        double lo = p[a][0], hi = p[a][0];
        for (int64_t n = 1; n < N; n++) { lo = p[a][n] < lo ? p[a][n] : lo; hi = p[a][n] > hi ? p[a][n] : hi; }
        g->lo[a] = lo; ext[a] = hi - lo; big = ext[a] > big ? ext[a] : big;
    }
    g->h = big > 0 ? big / ceil(cbrt((double)N / 2.0)) : 1.0;
    int64_t total = 1;
    for (int a = 0; a < 3; a++) {
        double r = floor(ext[a] / g->h) + 1;
        g->res[a] = r < 1 ? 1 : (int64_t)r;
        total *= g->res[a];
    }
    if (total > maxcells) { g->res[0] = g->res[1] = g->res[2] = 1; g->h = big > 0 ? 2 * big : 1.0; total = 1; }
    memset(g->start, 0, sizeof(int64_t) * (size_t)(total + 1));
    for (int64_t n = 0; n < N; n++) {
        int64_t c = 0;
        for (int a = 0; a < 3; a++) {
            double f = floor(((double)p[a][n] - g->lo[a]) / g->h);
            int64_t i = f < 0 ? 0 : (f >= (double)g->res[a] ? g->res[a] - 1 : (int64_t)f);
            c = c * g->res[a] + i;
        }
        g->cell[n] = c;
        g->start[c + 1]++;
    }
    for (int64_t c = 0; c < total; c++) g->start[c + 1] += g->start[c];
    for (int64_t n = 0; n < N; n++) {            /* start[c] runs ahead while filling, then is restored */
        int64_t at = g->start[g->cell[n]]++;
        g->x[at] = x[n]; g->y[at] = y[n]; g->z[at] = z[n]; g->idx[at] = n;
    }
    for (int64_t c = total; c > 0; c--) g->start[c] = g->start[c - 1];
    g->start[0] = 0;
}

/* k nearest of q in the grid: shells of cells at Chebyshev distance s = 0, 1, ... around q's cell, until
   the list is full and every unvisited cell lies farther than the k-th distance; once the list is full,
   a cell farther than the k-th distance is skipped. "Farther" keeps a 1e-5 relative margin on d2 for
   rounding, so a point left out is strictly farther and no tie with it can arise. Boundary cells hold
   the clamped points beyond them, so they count as unbounded outwards. */
static void NAME(grid_knn)(const NAME(grid) *g, const T *q, int64_t k, T *bd, int64_t *bi) {
    int64_t qc[3], cnt = 0, reach = 0;
    for (int a = 0; a < 3; a++) {
        double f = floor(((double)q[a] - g->lo[a]) / g->h);
        qc[a] = f < 0 ? 0 : (f >= (double)g->res[a] ? g->res[a] - 1 : (int64_t)f);
        int64_t r = qc[a] > g->res[a] - 1 - qc[a] ? qc[a] : g->res[a] - 1 - qc[a];
        reach = r > reach ? r : reach;
    }
    for (int64_t s = 0; s <= reach; s++) {
        int64_t lo0 = qc[0] - s < 0 ? 0 : qc[0] - s, hi0 = qc[0] + s >= g->res[0] ? g->res[0] - 1 : qc[0] + s;
        int64_t lo1 = qc[1] - s < 0 ? 0 : qc[1] - s, hi1 = qc[1] + s >= g->res[1] ? g->res[1] - 1 : qc[1] + s;
        for (int64_t i = lo0; i <= hi0; i++) {
            for (int64_t j = lo1; j <= hi1; j++) {
                int edge = i == qc[0] - s || i == qc[0] + s || j == qc[1] - s || j == qc[1] + s;
                for (int64_t l = qc[2] - s; l <= qc[2] + s; l += (edge || s == 0) ? 1 : 2 * s) {
                    if (l < 0 || l >= g->res[2]) continue;
                    int64_t c = (i * g->res[1] + j) * g->res[2] + l;
                    if (cnt == k && g->start[c] < g->start[c + 1]) {       /* skip a cell beyond the k-th */
                        int64_t at[3] = {i, j, l};
                        double lb2 = 0;
                        for (int a = 0; a < 3; a++) {
                            double lo = g->lo[a] + (double)at[a] * g->h, f = 0;
                            if (at[a] > 0 && (double)q[a] < lo) f = lo - (double)q[a];
                            if (at[a] < g->res[a] - 1 && (double)q[a] > lo + g->h) f = (double)q[a] - lo - g->h;
                            lb2 += f * f;
                        }
                        if (lb2 > 1e-14 * g->h * g->h && (double)bd[k - 1] < lb2 * (1.0 - 1e-5)) continue;
                    }
                    for (int64_t m = g->start[c]; m < g->start[c + 1]; m++) {
                        T dx = q[0] - g->x[m], dy = q[1] - g->y[m], dz = q[2] - g->z[m];
                        T e = dx * dx; e = e + dy * dy; e = e + dz * dz;
                        NAME(insert)(bd, bi, &cnt, k, e, g->idx[m]);
                    }
                }
            }
        }
        if (cnt < k) continue;
        double lb = INFINITY;                 /* distance from q to the nearest face of the searched box */
        for (int a = 0; a < 3; a++) {
            if (qc[a] - s > 0) {
                double f = (double)q[a] - (g->lo[a] + (double)(qc[a] - s) * g->h); lb = f < lb ? f : lb;
            }
            if (qc[a] + s < g->res[a] - 1) {
                double f = g->lo[a] + (double)(qc[a] + s + 1) * g->h - (double)q[a]; lb = f < lb ? f : lb;
            }
        }
        if (lb > 1e-7 * g->h && (double)bd[k - 1] < lb * lb * (1.0 - 1e-5)) return;
    }
}

static void NAME(knn_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(near_ctx) *c = (NAME(near_ctx) *)c_;
    const int64_t N = c->N, B = c->B, M = c->M, k = c->k, maxcells = 4 * N + 64;
    T *d = (T *)malloc(sizeof(T) * (size_t)(BLK + k + 3 * N)), *bd = d + BLK;
    int64_t *ibuf = (int64_t *)malloc(sizeof(int64_t) * (size_t)(2 * N + maxcells + 1));
    if (!d || !ibuf) { free(d); free(ibuf); c->failed = 1; return; }
    NAME(grid) g;
    g.x = bd + k; g.y = g.x + N; g.z = g.y + N; g.idx = ibuf; g.cell = ibuf + N; g.start = ibuf + 2 * N;
    int64_t built = -1;
    for (int64_t r = lo; r < hi; r++) {
        const int64_t b = r / M;
        const T *q = c->query + 3 * r, *x = c->planes + b * N, *y = x + B * N, *z = y + B * N;
        int64_t *bi = c->out + r * k;
        if (c->grid) {
            if (built != b) { NAME(grid_build)(&g, x, y, z, N, maxcells); built = b; }
            NAME(grid_knn)(&g, q, k, bd, bi);
            continue;
        }
        int64_t cnt = 0;
        for (int64_t n0 = 0; n0 < N; n0 += BLK) {
            int64_t len = N - n0 < BLK ? N - n0 : BLK;
            NAME(block)(x + n0, y + n0, z + n0, q[0], q[1], q[2], len, d);
            T worst = cnt == k ? bd[k - 1] : (T)INFINITY;
            for (int64_t j = 0; j < len; j++) {
                if (!(d[j] < worst)) continue;     /* scanning in index order: an equal distance never wins */
                NAME(insert)(bd, bi, &cnt, k, d[j], n0 + j);
                worst = cnt == k ? bd[k - 1] : (T)INFINITY;
            }
        }
    }
    free(d); free(ibuf);
}

int NAME(knn)(const T *query, const T *planes, int64_t B, int64_t M, int64_t N, int64_t k, int grid,
              int64_t *out, int threads) {
    NAME(near_ctx) c = {query, planes, B, M, N, k, 0, grid, out, 0};
    parallel(NAME(knn_span), &c, B * M, threads);
    return c.failed;
}

static void NAME(ball_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(near_ctx) *c = (NAME(near_ctx) *)c_;
    const int64_t N = c->N, B = c->B, k = c->k;
    const T r2 = c->r2;
    T *d = (T *)malloc(sizeof(T) * BLK);
    if (!d) { c->failed = 1; return; }
    for (int64_t r = lo; r < hi; r++) {
        const T *q = c->query + 3 * r, *x = c->planes + (r / c->M) * N, *y = x + B * N, *z = y + B * N;
        int64_t *o = c->out + r * k, cnt = 0;
        for (int64_t n0 = 0; n0 < N && cnt < k; n0 += BLK) {
            int64_t len = N - n0 < BLK ? N - n0 : BLK, j0 = 0;
            NAME(block)(x + n0, y + n0, z + n0, q[0], q[1], q[2], len, d);
            for (; j0 + W <= len && cnt < k; j0 += W) {        /* W at a time: most hold no neighbour */
                int any = 0;
                for (int l = 0; l < W; l++) any |= d[j0 + l] < r2;
                if (!any) continue;
                for (int l = 0; l < W && cnt < k; l++) if (d[j0 + l] < r2) o[cnt++] = n0 + j0 + l;
            }
            for (int64_t j = j0; j < len && cnt < k; j++) if (d[j] < r2) o[cnt++] = n0 + j;
        }
        if (cnt == 0) {                                  /* empty ball: the first nearest point */
            T best = (T)INFINITY;
            int64_t arg = 0;
            for (int64_t n0 = 0; n0 < N; n0 += BLK) {
                int64_t len = N - n0 < BLK ? N - n0 : BLK;
                NAME(block)(x + n0, y + n0, z + n0, q[0], q[1], q[2], len, d);
                for (int64_t j = 0; j < len; j++) if (d[j] < best) { best = d[j]; arg = n0 + j; }
            }
            o[cnt++] = arg;
        }
        for (int64_t j = cnt; j < k; j++) o[j] = o[0];
    }
    free(d);
}

int NAME(ball)(const T *query, const T *planes, int64_t B, int64_t M, int64_t N, T r2, int64_t k,
               int64_t *out, int threads) {
    NAME(near_ctx) c = {query, planes, B, M, N, k, r2, 0, out, 0};
    parallel(NAME(ball_span), &c, B * M, threads);
    return c.failed;
}
"""
VARIANTS = (("float", "f32", "vf32", "vi32", 8, "int32_t"), ("double", "f64", "vf64", "vi64", 4, "int64_t"))
SOURCE = PRELUDE + "".join(
    f"#define T {t}\n#define NAME(x) x##_{s}\n#define VT {vt}\n#define VI {vi}\n#define W {w}\n#define IT {it}\n"
    f"{BODY}{NORM_BODY}#undef T\n#undef NAME\n#undef VT\n#undef VI\n#undef W\n#undef IT\n"
    for t, s, vt, vi, w, it in VARIANTS)
"""The C source: :data:`BODY` (point ops) and :data:`.native_norm_source.NORM_BODY` (batch norm passes) once
per dtype (``T``; ``VT``/``VI``: W-lane float/int vectors; ``IT``: the integer of ``T``'s width, for indices kept
in vector lanes beside values)."""

FLAGS = ("-O3", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math",
         "-std=gnu99")
DTYPES = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


def cache_dir() -> Path:
    """Where the compiled library lives: ``$ALIGNKIT_NATIVE_CACHE`` or ``~/.cache/alignkit/native``."""
    return Path(os.environ.get("ALIGNKIT_NATIVE_CACHE") or Path.home() / ".cache" / "alignkit" / "native")


def compile_library(target: Path, compiler: str) -> None:
    """Compile :data:`SOURCE` to ``target`` (written to a temporary name, then renamed: concurrency-safe)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, lib = Path(tmp) / "pointops.c", Path(tmp) / target.name
        src.write_text(SOURCE)
        subprocess.run([compiler, *FLAGS, str(src), "-o", str(lib), "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(lib, target)


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The compiled point-op library, built on first use; None when it cannot be built or loaded."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None or platform.system() == "Windows":
        return None
    key = hashlib.sha256("\n".join([SOURCE, *FLAGS, compiler, platform.machine()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"pointops-{key}.so"
    try:
        if not target.exists():
            compile_library(target, compiler)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix, real in DTYPES.values():
        getattr(lib, f"fps_{suffix}").argtypes = [ptr, i64, i64, i64, ptr, ptr, cint]
        getattr(lib, f"knn_{suffix}").argtypes = [ptr, ptr, i64, i64, i64, i64, cint, ptr, cint]
        getattr(lib, f"ball_{suffix}").argtypes = [ptr, ptr, i64, i64, i64, real, i64, ptr, cint]
        getattr(lib, f"bn_stats_{suffix}").argtypes = [ptr, i64, i64, ptr, cint]
        getattr(lib, f"group_select_{suffix}").argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, cint]
        getattr(lib, f"stats_select_{suffix}").argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, cint]
        getattr(lib, f"group_unselect_{suffix}").argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, cint]
        getattr(lib, f"bnrelu_forward_{suffix}").argtypes = [ptr, i64, i64, ptr, ptr, ptr, cint]
        getattr(lib, f"bnrelu_sums_{suffix}").argtypes = [ptr, ptr, i64, i64, ptr, ptr, ptr, ptr, cint]
        getattr(lib, f"bnrelu_backward_{suffix}").argtypes = [ptr, ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, cint]
        getattr(lib, f"narrow_relu_{suffix}").argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, cint]
        getattr(lib, f"narrow_sums_{suffix}").argtypes = [ptr, ptr, ptr, i64, i64, i64, ptr, cint]
        getattr(lib, f"narrow_moments_{suffix}").argtypes = [ptr, i64, i64, ptr, cint]
        getattr(lib, f"rows_scatter_{suffix}").argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr, cint]
        getattr(lib, f"rows_gather_{suffix}").argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr, cint]
    return lib


def available() -> bool:
    """True when the compiled library can be used."""
    return library() is not None


def supports(*tensors: Tensor) -> bool:
    """True when the native loops can take these tensors: CPU, float32 or float64, library built."""
    return all(t.device.type == "cpu" and t.dtype in DTYPES for t in tensors) and available()


def planes(xyz: Tensor) -> Tensor:
    """(B, N, 3) -> contiguous coordinate planes (3, B, N)."""
    return xyz.detach().permute(2, 0, 1).contiguous()


def call(name: str, dtype: torch.dtype, *args: object) -> None:
    suffix, _ = DTYPES[dtype]
    failed = getattr(library(), f"{name}_{suffix}")(*args, torch.get_num_threads())
    if failed:
        raise MemoryError(f"native point op '{name}' could not allocate its scratch memory")


def fps(xyz: Tensor, npoint: int, start: Tensor) -> Tensor:
    """Farthest point sampling, (B, N, 3) -> (B, npoint) long; see the module docstring for the order."""
    B, N, _ = xyz.shape
    p, first = planes(xyz), start.contiguous()
    out = torch.empty(B, npoint, dtype=torch.long)
    call("fps", xyz.dtype, p.data_ptr(), B, N, npoint, first.data_ptr(), out.data_ptr())
    return out


def knn(query: Tensor, points: Tensor, k: int, grid: Optional[bool] = None) -> Tensor:
    """Indices (B, M, k) of the k nearest points, ascending by (d2, index).

    ``grid``: search a uniform grid of each cloud (about 2 points per cell, shells of cells outwards)
    instead of scanning all N points; None picks the grid when ``N >= 256`` and ``M >= 16``. Both give
    the same indices.
    """
    B, M, _ = query.shape
    N = points.shape[1]
    use_grid = (N >= 256 and M >= 16) if grid is None else grid
    q, p = query.detach().contiguous(), planes(points)
    out = torch.empty(B, M, k, dtype=torch.long)
    call("knn", query.dtype, q.data_ptr(), p.data_ptr(), B, M, N, k, int(use_grid), out.data_ptr())
    return out


def ball_query(query: Tensor, points: Tensor, r2: float, k: int) -> Tensor:
    """Indices (B, M, k): the first k points with ``d2 < r2`` in index order, padded (see module docstring)."""
    B, M, _ = query.shape
    q, p = query.detach().contiguous(), planes(points)
    out = torch.empty(B, M, k, dtype=torch.long)
    call("ball", query.dtype, q.data_ptr(), p.data_ptr(), B, M, points.shape[1], r2, k, out.data_ptr())
    return out

