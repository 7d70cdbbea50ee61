"""C source of the batch norm passes of PointNet++ levels, compiled into :mod:`..ops_native`'s library.

Templated like :data:`..ops_native.BODY` (``T``, ``IT``, ``NAME``, ``HOT``, ``parallel``); the Python side is
:mod:`.models.grouped_norm`. Statistics and gradient sums accumulate in double (a float's square is exact in
double); the selects are written as selects of loaded values so that they vectorise.
"""

NORM_BODY = r"""
/* ------------------------------------------- grouped rows: batch-norm statistics, signed max over k */
/* Sums over parts: `n` items split into at most `threads` parts of at least `per` items; fn(ctx, lo, hi) runs over
   part indices and fills, for each, `width` doubles of the scratch it finds at *acc_slot (*parts_slot: the count);
   out[0:width] = the sum over parts. Returns 1 when the scratch cannot be allocated. */
static int NAME(sum_parts)(span_fn fn, void *ctx, double **acc_slot, int64_t *parts_slot, int64_t n, int64_t per,
                           int64_t width, double *out, int threads) {
    int64_t parts = threads < 1 ? 1 : threads;
    if (parts > n / per + 1) parts = n / per + 1;
    double *acc = (double *)malloc(sizeof(double) * (size_t)(width * parts));
    if (!acc) return 1;
    *acc_slot = acc; *parts_slot = parts;
    parallel(fn, ctx, parts, threads);
    for (int64_t j = 0; j < width; j++) out[j] = 0;
    for (int64_t part = 0; part < parts; part++)
        for (int64_t j = 0; j < width; j++) out[j] += acc[width * part + j];
    free(acc);
    return 0;
}

typedef struct { const T *z; int64_t R, C, parts; double *acc; } NAME(stats_ctx);

/* acc[part] = (sum, sum of squares) per channel over its rows, in double (a float's square is exact in double). */
HOT static void NAME(stats_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(stats_ctx) *c = (NAME(stats_ctx) *)c_;
    const int64_t C = c->C;
    for (int64_t part = lo; part < hi; part++) {
        double *restrict s = c->acc + 2 * C * part, *restrict q = s + C;
        for (int64_t j = 0; j < C; j++) { s[j] = 0; q[j] = 0; }
        for (int64_t r = c->R * part / c->parts; r < c->R * (part + 1) / c->parts; r++) {
            const T *restrict row = c->z + r * C;
            for (int64_t j = 0; j < C; j++) { double v = (double)row[j]; s[j] += v; q[j] += v * v; }
        }
    }
}

/* out = (sum, sum of squares) per channel of z (R, C) */
int NAME(bn_stats)(const T *z, int64_t R, int64_t C, double *out, int threads) {
    NAME(stats_ctx) c = {z, R, C, 0, NULL};
    return NAME(sum_parts)(NAME(stats_span), &c, &c.acc, &c.parts, R, 1024, 2 * C, out, threads);
}

typedef struct { const T *z; int64_t k, C; const T *sign; T *out; IT *idx; int nan; } NAME(select_ctx);

/* Per group g and channel j: the first row i of z[g] (k rows of C) maximising sign[j] * z[g, i, j]. */
HOT static void NAME(select_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(select_ctx) *c = (NAME(select_ctx) *)c_;
    const int64_t k = c->k, C = c->C;
    const T *sign = c->sign;
    int nan = 0;
    for (int64_t g = lo; g < hi; g++) {
        const T *zg = c->z + g * k * C;
        T *o = c->out + g * C;
        IT *ix = c->idx + g * C;
        for (int64_t j = 0; j < C; j++) { o[j] = zg[j] * sign[j]; ix[j] = 0; nan |= zg[j] != zg[j]; }
        for (int64_t i = 1; i < k; i++) {
            const T *row = zg + i * C;
            for (int64_t j = 0; j < C; j++) {
                T v = row[j] * sign[j];
                IT better = -(IT)(v > o[j]);
                nan |= v != v;
                o[j] = v > o[j] ? v : o[j];
                ix[j] = (ix[j] & ~better) | ((IT)i & better);
            }
        }
    }
    if (nan) c->nan = 1;
}

int NAME(group_select)(const T *z, int64_t G, int64_t k, int64_t C, const T *sign, T *out, IT *idx, int threads) {
    NAME(select_ctx) c = {z, k, C, sign, out, idx, 0};
    parallel(NAME(select_span), &c, G, threads);
    return c.nan;
}

typedef struct { const T *z, *sign, *shift; T *out; IT *idx; int64_t k, C, G, parts; double *acc; }
    NAME(stats_select_ctx);

/* One sweep over each group's k rows: group_select's pick (no NaN test: a NaN shows in the sums) and, into
   acc[part], per channel (sum d, sum d^2) with d = z - shift, summed in T over the group, in double across groups
   (the shift, a sample of z, keeps the sums of squares free of cancellation). */
HOT static void NAME(stats_select_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(stats_select_ctx) *c = (NAME(stats_select_ctx) *)c_;
    const int64_t k = c->k, C = c->C;
    const T *restrict sign = c->sign, *restrict m = c->shift;
    T blk[2 * C];
    T *restrict ts = blk, *restrict tq = blk + C;
    for (int64_t part = lo; part < hi; part++) {
        const int64_t g0 = c->G * part / c->parts, g1 = c->G * (part + 1) / c->parts;
        double *restrict s = c->acc + 2 * C * part, *restrict q = s + C;
        for (int64_t j = 0; j < C; j++) { s[j] = 0; q[j] = 0; }
        for (int64_t g = g0; g < g1; g++) {
            const T *restrict zg = c->z + g * k * C;
            T *restrict o = c->out + g * C;
            IT *restrict ix = c->idx + g * C;
            for (int64_t j = 0; j < C; j++) {
                T v = zg[j], d = v - m[j];
                ts[j] = d; tq[j] = d * d; o[j] = v * sign[j]; ix[j] = 0;
            }
            for (int64_t i = 1; i < k; i++) {
                const T *restrict row = zg + i * C;
                for (int64_t j = 0; j < C; j++) {
                    T v = row[j], d = v - m[j];
                    T p = d * d;
                    ts[j] = ts[j] + d; tq[j] = tq[j] + p;
                    T sv = v * sign[j];
                    IT better = -(IT)(sv > o[j]);
                    o[j] = sv > o[j] ? sv : o[j];
                    ix[j] = (ix[j] & ~better) | ((IT)i & better);
                }
            }
            for (int64_t j = 0; j < C; j++) { s[j] += (double)ts[j]; q[j] += (double)tq[j]; }
        }
    }
}

/* z (G, k, C), a block of the rows (in cache): group_select's pick into out/idx, and acc[0:2C] += per channel
   (sum (z - shift), sum (z - shift)^2). Returns 1 when the scratch cannot be allocated. */
int NAME(stats_select)(const T *z, int64_t G, int64_t k, int64_t C, const T *sign, const T *shift, T *out, IT *idx,
                       double *acc, int threads) {
    NAME(stats_select_ctx) c = {z, sign, shift, out, idx, k, C, G, 0, NULL};
    double *part_sums = (double *)malloc(sizeof(double) * (size_t)(2 * C));
    if (!part_sums) return 1;
    int failed = NAME(sum_parts)(NAME(stats_select_span), &c, &c.acc, &c.parts, G, 8, 2 * C, part_sums, threads);
    for (int64_t j = 0; j < 2 * C; j++) acc[j] += part_sums[j];
    free(part_sums);
    return failed;
}
typedef struct {
    const T *z; int64_t k, C; const T *slope, *offset; const IT *rows; const T *add; T *dz;
} NAME(unselect_ctx);

/* dz[g, i, j] = slope[j] z[g, i, j] + offset[j], plus add[g, j] at the selected row i = rows[g, j]. */
HOT static void NAME(unselect_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(unselect_ctx) *c = (NAME(unselect_ctx) *)c_;
    const int64_t k = c->k, C = c->C;
    const T *restrict slope = c->slope, *restrict offset = c->offset;
    for (int64_t g = lo; g < hi; g++) {
        const IT *restrict rows = c->rows + g * C;
        const T *restrict add = c->add + g * C;
        for (int64_t i = 0; i < k; i++) {
            const T *restrict zr = c->z + (g * k + i) * C;
            T *restrict dr = c->dz + (g * k + i) * C;
            for (int64_t j = 0; j < C; j++) {          /* selects of loaded values only: no conditional FP op */
                T v = slope[j] * zr[j];
                v = v + offset[j];
                T extra = rows[j] == (IT)i ? add[j] : (T)0;
                dr[j] = v + extra;
            }
        }
    }
}

int NAME(group_unselect)(const T *z, int64_t G, int64_t k, int64_t C, const T *slope, const T *offset,
                         const IT *rows, const T *add, T *dz, int threads) {
    NAME(unselect_ctx) c = {z, k, C, slope, offset, rows, add, dz};
    parallel(NAME(unselect_span), &c, G, threads);
    return 0;
}
/* ---------------------------------------------- batch norm + ReLU over rows (R, C): apply, gradient
   y = max(a z + b, 0) with a = scale, b = shift; the backward recomputes y > 0 from z with the same two roundings
   (a z, then + b: no contraction), so y itself is never read back. */
typedef struct {
    const T *z, *g; int64_t R, C; const T *a, *b, *mean, *slope, *offset; T *out; int64_t parts; double *acc;
} NAME(rows_ctx);

/* out = max(a z + b, 0) */
HOT static void NAME(bnrelu_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(rows_ctx) *c = (NAME(rows_ctx) *)c_;
    const int64_t C = c->C;
    const T *restrict a = c->a, *restrict b = c->b;
    for (int64_t r = lo; r < hi; r++) {
        const T *restrict zr = c->z + r * C;
        T *restrict o = c->out + r * C;
        for (int64_t j = 0; j < C; j++) { T v = a[j] * zr[j]; v = v + b[j]; o[j] = v > 0 ? v : 0; }
    }
}

/* acc[part] = per channel (sum dy, sum dy (z - mean)) with dy = g where a z + b > 0: rows summed in T over blocks
   of 16 rows, the blocks in double */
HOT static void NAME(bnrelu_sums_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(rows_ctx) *c = (NAME(rows_ctx) *)c_;
    const int64_t C = c->C;
    const T *restrict a = c->a, *restrict b = c->b, *restrict mean = c->mean;
    T blk[2 * C];
    T *restrict ts = blk, *restrict tq = blk + C;
    for (int64_t part = lo; part < hi; part++) {
        double *restrict s = c->acc + 2 * C * part, *restrict q = s + C;
        for (int64_t j = 0; j < C; j++) { s[j] = 0; q[j] = 0; }
        const int64_t r0 = c->R * part / c->parts, r1 = c->R * (part + 1) / c->parts;
        for (int64_t b0 = r0; b0 < r1; b0 += 16) {
            const int64_t b1 = b0 + 16 < r1 ? b0 + 16 : r1;
            for (int64_t j = 0; j < C; j++) { ts[j] = 0; tq[j] = 0; }
            for (int64_t r = b0; r < b1; r++) {
                const T *restrict zr = c->z + r * C, *restrict gr = c->g + r * C;
                for (int64_t j = 0; j < C; j++) {
                    T v = a[j] * zr[j];
                    v = v + b[j];
                    T dy = v > 0 ? gr[j] : (T)0;
                    T centred = zr[j] - mean[j];
                    T p = dy * centred;
                    ts[j] = ts[j] + dy; tq[j] = tq[j] + p;
                }
            }
            for (int64_t j = 0; j < C; j++) { s[j] += (double)ts[j]; q[j] += (double)tq[j]; }
        }
    }
}

/* out = (a z + b > 0 ? a g : 0) + slope z + offset */
HOT static void NAME(bnrelu_grad_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(rows_ctx) *c = (NAME(rows_ctx) *)c_;
    const int64_t C = c->C;
    const T *restrict a = c->a, *restrict b = c->b, *restrict slope = c->slope, *restrict off = c->offset;
    for (int64_t r = lo; r < hi; r++) {
        const T *restrict zr = c->z + r * C, *restrict gr = c->g + r * C;
        T *restrict o = c->out + r * C;
        for (int64_t j = 0; j < C; j++) {
            T y = a[j] * zr[j];
            y = y + b[j];
            T v = slope[j] * zr[j];
            v = v + off[j];
            T d = a[j] * gr[j];
            T extra = y > 0 ? d : (T)0;
            o[j] = v + extra;
        }
    }
}

int NAME(bnrelu_forward)(const T *z, int64_t R, int64_t C, const T *scale, const T *shift, T *out, int threads) {
    NAME(rows_ctx) c = {z, NULL, R, C, scale, shift, NULL, NULL, NULL, out, 0, NULL};
    parallel(NAME(bnrelu_span), &c, R, threads);
    return 0;
}

/* out = (sum dy, sum dy (z - mean)) per channel */
int NAME(bnrelu_sums)(const T *g, const T *z, int64_t R, int64_t C, const T *scale, const T *shift, const T *mean,
                      double *out, int threads) {
    NAME(rows_ctx) c = {z, g, R, C, scale, shift, mean, NULL, NULL, NULL, 0, NULL};
    return NAME(sum_parts)(NAME(bnrelu_sums_span), &c, &c.acc, &c.parts, R, 1024, 2 * C, out, threads);
}

int NAME(bnrelu_backward)(const T *g, const T *z, int64_t R, int64_t C, const T *scale, const T *shift,
                          const T *slope, const T *offset, T *out, int threads) {
    NAME(rows_ctx) c = {z, g, R, C, scale, shift, NULL, slope, offset, out, 0, NULL};
    parallel(NAME(bnrelu_grad_span), &c, R, threads);
    return 0;
}

/* ------------------------- a narrow first layer (x of K <= 8 columns) with its batch norm and ReLU: z never stored */
typedef struct { const T *x, *g, *y; int64_t R, K, C; const T *wt, *b; T *out; int64_t parts; double *acc; }
    NAME(narrow_ctx);

/* BODY(KK) with KK = K as a constant (K <= 8): the k loops unroll and the j loops vectorise */
#define NARROW_SWITCH(K, BODY)                                                                           \
    switch (K) {                                                                                         \
        case 1: BODY(1) break; case 2: BODY(2) break; case 3: BODY(3) break; case 4: BODY(4) break;      \
        case 5: BODY(5) break; case 6: BODY(6) break; case 7: BODY(7) break; default: BODY(8) break;    \
    }

/* out[r, c] = max(b[c] + sum_k x[r, k] wt[k, c], 0) */
#define NARROW_ROWS(KK)                                                                                  \
    for (int64_t r = lo; r < hi; r++) {                                                                 \
        const T *restrict xr = x + r * (KK);                                                            \
        T *restrict o = out + r * C;                                                                    \
        for (int64_t j = 0; j < C; j++) {                                                               \
            T v = b[j];                                                                                 \
            for (int64_t k = 0; k < (KK); k++) { T p = xr[k] * wt[k * C + j]; v = v + p; }             \
            o[j] = v > 0 ? v : 0;                                                                       \
        }                                                                                               \
    }
HOT static void NAME(narrow_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(narrow_ctx) *c = (NAME(narrow_ctx) *)c_;
    const int64_t C = c->C;
    const T *restrict x = c->x, *restrict wt = c->wt, *restrict b = c->b;
    T *restrict out = c->out;
    NARROW_SWITCH(c->K, NARROW_ROWS)
}
#undef NARROW_ROWS

/* acc[part] = per channel sum dy (C), then sum dy x[:, k] for each k (K rows of C), dy = g where y > 0; rows are
   summed in T over blocks of NB rows, the blocks in double */
#define NB 16
#define NARROW_SUMS(KK)                                                                                  \
    for (int64_t r = b0; r < b1; r++) {                                                                 \
        const T *restrict gr = g + r * C, *restrict yr = y + r * C, *restrict xr = x + r * (KK);       \
        for (int64_t j = 0; j < C; j++) {                                                               \
            T d = yr[j] > 0 ? gr[j] : (T)0;                                                             \
            t[j] = t[j] + d;                                                                            \
            for (int64_t k = 0; k < (KK); k++) { T p = d * xr[k]; t[(1 + k) * C + j] = t[(1 + k) * C + j] + p; } \
        }                                                                                               \
    }
HOT static void NAME(narrow_sums_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(narrow_ctx) *c = (NAME(narrow_ctx) *)c_;
    const int64_t K = c->K, C = c->C, width = (1 + K) * C;
    const T *restrict g = c->g, *restrict y = c->y, *restrict x = c->x;
    T blk[width];                                  /* width <= 9 C: on the stack */
    T *restrict t = blk;
    for (int64_t part = lo; part < hi; part++) {
        double *restrict s = c->acc + width * part;
        for (int64_t j = 0; j < width; j++) s[j] = 0;
        const int64_t r0 = c->R * part / c->parts, r1 = c->R * (part + 1) / c->parts;
        for (int64_t b0 = r0; b0 < r1; b0 += NB) {
            const int64_t b1 = b0 + NB < r1 ? b0 + NB : r1;
            for (int64_t j = 0; j < width; j++) t[j] = 0;
            NARROW_SWITCH(K, NARROW_SUMS)
            for (int64_t j = 0; j < width; j++) s[j] += (double)t[j];
        }
    }
}
#undef NARROW_SUMS
#undef NB
#undef NARROW_SWITCH

/* acc[part] = (sum x[:, k] (K), sum x[:, k] x[:, l] (K x K)) over its rows, in double */
HOT static void NAME(narrow_moments_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(narrow_ctx) *c = (NAME(narrow_ctx) *)c_;
    const int64_t K = c->K;
    for (int64_t part = lo; part < hi; part++) {
        double *restrict s = c->acc + (K + K * K) * part, *restrict q = s + K;
        for (int64_t j = 0; j < K + K * K; j++) s[j] = 0;
        for (int64_t r = c->R * part / c->parts; r < c->R * (part + 1) / c->parts; r++) {
            const T *restrict xr = c->x + r * K;
            for (int64_t k = 0; k < K; k++) {
                const double v = (double)xr[k];
                s[k] += v;
                for (int64_t l = 0; l < K; l++) q[k * K + l] += v * (double)xr[l];
            }
        }
    }
}

/* out = (column sums (K), Gram matrix x^T x (K x K)) of x (R, K), in double */
int NAME(narrow_moments)(const T *x, int64_t R, int64_t K, double *out, int threads) {
    NAME(narrow_ctx) c = {x, NULL, NULL, R, K, 0, NULL, NULL, NULL, 0, NULL};
    return NAME(sum_parts)(NAME(narrow_moments_span), &c, &c.acc, &c.parts, R, 1024, K + K * K, out, threads);
}

int NAME(narrow_relu)(const T *x, int64_t R, int64_t K, int64_t C, const T *wt, const T *b, T *out, int threads) {
    NAME(narrow_ctx) c = {x, NULL, NULL, R, K, C, wt, b, out, 0, NULL};
    parallel(NAME(narrow_span), &c, R, threads);
    return 0;
}

/* out = (sum dy, sum dy x[:, 0], ..., sum dy x[:, K-1]) per channel: (1 + K) x C doubles */
int NAME(narrow_sums)(const T *g, const T *y, const T *x, int64_t R, int64_t K, int64_t C, double *out,
                      int threads) {
    NAME(narrow_ctx) c = {x, g, y, R, K, C, NULL, NULL, NULL, 0, NULL};
    return NAME(sum_parts)(NAME(narrow_sums_span), &c, &c.acc, &c.parts, R, 1024, (1 + K) * C, out, threads);
}

/* ------------------------------- the selected rows' share of a grouped linear layer's gradients (z never stored) */
typedef struct {
    const T *x, *w, *add; const IT *rows; int64_t k, K, C; T *dx; int64_t G, parts; double *acc;
} NAME(sparse_ctx);

/* dx[g k + rows[g, c], :] += add[g, c] w[c, :] (groups own disjoint rows: no race) */
HOT static void NAME(scatter_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(sparse_ctx) *c = (NAME(sparse_ctx) *)c_;
    const int64_t k = c->k, K = c->K, C = c->C;
    for (int64_t g = lo; g < hi; g++)
        for (int64_t ch = 0; ch < C; ch++) {
            const T a = c->add[g * C + ch];
            const T *restrict w = c->w + ch * K;
            T *restrict d = c->dx + (g * k + (int64_t)c->rows[g * C + ch]) * K;
            if (K % 8 == 0) {                          /* whole chunks of 8: one vector each, no remainder */
                for (int64_t j0 = 0; j0 < K; j0 += 8)
                    for (int64_t j = j0; j < j0 + 8; j++) { T p = a * w[j]; d[j] = d[j] + p; }
            } else {
                for (int64_t j = 0; j < K; j++) { T p = a * w[j]; d[j] = d[j] + p; }
            }
        }
}

/* acc[part][c, :] = sum over its groups of add[g, c] x[g k + rows[g, c], :] */
HOT static void NAME(gather_span)(void *c_, int64_t lo, int64_t hi) {
    NAME(sparse_ctx) *c = (NAME(sparse_ctx) *)c_;
    const int64_t k = c->k, K = c->K, C = c->C;
    T *t = (T *)malloc(sizeof(T) * (size_t)(C * K));      /* 32 groups summed in T, then added in double */
    for (int64_t part = lo; part < hi; part++) {
        double *restrict s = c->acc + C * K * part;
        for (int64_t j = 0; j < C * K; j++) s[j] = 0;
        const int64_t g0 = c->G * part / c->parts, g1 = c->G * (part + 1) / c->parts;
        for (int64_t b0 = g0; b0 < g1; b0 += 32) {
            const int64_t b1 = b0 + 32 < g1 ? b0 + 32 : g1;
            if (t) for (int64_t j = 0; j < C * K; j++) t[j] = 0;
            for (int64_t g = b0; g < b1; g++)
                for (int64_t ch = 0; ch < C; ch++) {
                    const T a = c->add[g * C + ch];
                    const T *restrict xr = c->x + (g * k + (int64_t)c->rows[g * C + ch]) * K;
                    if (t) {
                        T *restrict tc = t + ch * K;
                        if (K % 8 == 0) {
                            for (int64_t j0 = 0; j0 < K; j0 += 8)
                                for (int64_t j = j0; j < j0 + 8; j++) { T p = a * xr[j]; tc[j] = tc[j] + p; }
                        } else {
                            for (int64_t j = 0; j < K; j++) { T p = a * xr[j]; tc[j] = tc[j] + p; }
                        }
                    } else {
                        double *restrict sc = s + ch * K;
                        for (int64_t j = 0; j < K; j++) sc[j] += (double)a * (double)xr[j];
                    }
                }
            if (t) for (int64_t j = 0; j < C * K; j++) s[j] += (double)t[j];
        }
    }
    free(t);
}

int NAME(rows_scatter)(T *dx, int64_t G, int64_t k, int64_t K, int64_t C, const IT *rows, const T *add,
                       const T *w, int threads) {
    NAME(sparse_ctx) c = {NULL, w, add, rows, k, K, C, dx, G, 0, NULL};
    parallel(NAME(scatter_span), &c, G, threads);
    return 0;
}

int NAME(rows_gather)(const T *x, int64_t G, int64_t k, int64_t K, int64_t C, const IT *rows, const T *add,
                      double *out, int threads) {
    NAME(sparse_ctx) c = {x, NULL, add, rows, k, K, C, NULL, G, 0, NULL};
    return NAME(sum_parts)(NAME(gather_span), &c, &c.acc, &c.parts, G, 64, C * K, out, threads);
}
"""
