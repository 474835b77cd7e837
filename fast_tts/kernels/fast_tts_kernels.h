/* fast-tts native CPU kernels: every declaration shared between the C files and the Python binding.
 *
 * fast_tts/kernels/__init__.py hands the part between the two DECLARATIONS markers to cffi as is, so that part holds
 * only plain C declarations (no preprocessor lines but integer #defines). Layouts and rounding are described in the
 * file that defines each function.
 */
#ifndef FAST_TTS_KERNELS_H
#define FAST_TTS_KERNELS_H

#include <stdint.h>

/* BEGIN DECLARATIONS */
#define FAST_TTS_TILE 32          /* output rows per tile of a packed weight */
#define FAST_TTS_MAX_HEAD_DIM 256 /* decode steps keep one head's accumulator on the stack */

/* Bits of fast_tts_cpu_features(): what the running CPU can execute. */
#define FAST_TTS_CPU_AVX512F 1    /* the float32 kernels */
#define FAST_TTS_CPU_AVX512BF16 2 /* the bf16 kernels and decode steps (with AVX-512 F, BW and VL) */
#define FAST_TTS_CPU_AMXBF16 4    /* bf16 products through AMX tiles (amx_matmul.c), the OS permitting */
#define FAST_TTS_CPU_AMXINT8 8    /* the int8-weight product, and the 4-bit one at more rows (amx_matmul.c) */
#define FAST_TTS_CPU_AVX512VNNI 16 /* the 4-bit-weight product (grouped_matmul.c), with the bf16 kernels */
#define FAST_TTS_QUANT_GROUP 64           /* inputs per scale of a weight quantized in groups (int8 or 4-bit) */
#define FAST_TTS_MAX_QUANT_COLUMNS 8192   /* in_features of such a product at most */

int fast_tts_cpu_features(void);

/* pool.c: run fn(arg, i, threads) for i = 0..threads-1 (i = 0 on the caller); returns when all are done. */
typedef void (*fast_tts_job_fn)(void *arg, int thread, int threads);
void fast_tts_run_parallel(fast_tts_job_fn fn, void *arg, int threads);
void fast_tts_wait_a_little(int *spins);

/* bf16_matmul.c */
void fast_tts_pack_bf16(const uint16_t *weight, uint16_t *packed, int64_t n, int64_t k);
void fast_tts_matmul_bf16(const uint16_t *x, const uint16_t *packed, const float *bias, void *y, int64_t m, int64_t n,
                          int64_t k, int float_out, int threads);
void fast_tts_matmul_tile_range(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m,
                                int64_t n, int64_t k, int float_out, int64_t first, int64_t last);
/* amx_matmul.c: products through AMX tiles where the CPU and OS have them (on = 1; native() switches this on at
 * load) or through the vector kernels only (on = 0, the default): bf16 where k % 32 == 0 (AMX-BF16), 4-bit weights
 * at more than 4 rows (AMX-INT8; int8 weights always take AMX-INT8). Either way the sums are the same; returns 1 when
 * some AMX path is now in use. */
int fast_tts_use_amx(int on);

/* grouped_matmul.c: weights quantized in groups of FAST_TTS_QUANT_GROUP inputs with a float32 scale each (int8 or
 * 4-bit), times bf16 activations quantized to int8 per group */
void fast_tts_quantize_groups_int8(const uint16_t *x, int8_t *q, float *scales, int32_t *sums, int64_t k);
void fast_tts_matmul_int8(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                          int64_t k, int float_out, int threads);
void fast_tts_matmul_int4(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                          int64_t k, int float_out, int threads);

/* f32_matmul.c */
void fast_tts_pack_f32(const float *weight, float *packed, int64_t n, int64_t k);
void fast_tts_matmul_f32(const float *x, const float *packed, const float *bias, float *y, int64_t m, int64_t n,
                         int64_t k, int threads);

/* f32_matmul.c: tiles first..last-1 of fast_tts_matmul_f32's product, on the calling thread. */
void fast_tts_matmul_f32_tile_range(const float *x, const float *packed, const float *bias, float *y, int64_t m,
                                    int64_t n, int64_t k, int64_t first, int64_t last);

/* decode_step.c: the kinds of step */
#define FAST_TTS_STEP_BF16 0    /* bf16 weights, activations and cache (decode_ops.c) */
#define FAST_TTS_STEP_FLOAT32 1 /* float32 weights, activations and cache (decode_f32.c) */
#define FAST_TTS_STEP_INT8 2    /* int8 weights (grouped_matmul.c's layout), bf16 activations and cache */
#define FAST_TTS_STEP_INT4 3    /* 4-bit weights (grouped_matmul.c's layout), bf16 activations and cache */

/* decode_step.c: one decoder layer's weights (packed by fast_tts_pack_bf16 or fast_tts_pack_f32; biases float32
 * or NULL) and its cache. Element pointers hold bf16 (as uint16) or float32, as the step's `float32` flag says. */
typedef struct {
    const void *input_norm, *post_norm;
    const void *qkv, *o, *gate_up, *down;
    const float *qkv_bias, *o_bias, *gate_up_bias, *down_bias;
    void *k_cache, *v_cache;
} fast_tts_layer;

/* Work buffers of one step, sized for `batch` rows (scores: batch * heads * max_seq floats; q is float32). */
typedef struct {
    void *normed, *qkv, *attended, *projected, *gate_up, *activated;
    float *q, *scores;
} fast_tts_step_buffers;

/* Everything one decode step reads and writes. */
typedef struct {
    const fast_tts_layer *layers;
    int64_t n_layers;
    const void *final_norm;
    void *hidden;         /* (batch, hidden_size) input, overwritten by the residual stream */
    void *out;            /* (batch, hidden_size) final-norm hidden states */
    const void *cos, *sin;     /* (batch, head_dim) rotary tables at each row's position */
    const int64_t *rows;       /* (batch,) the cache row of each activation row */
    const int64_t *positions;  /* (batch,) each row's new position */
    const fast_tts_step_buffers *buffers;
    int64_t batch, hidden_size, inner, heads, kv_heads, head_dim, max_seq;
    float eps, scale;
    int threads;
    int kind;             /* FAST_TTS_STEP_*: the weights', activations' and cache's types */
} fast_tts_decode_args;

void fast_tts_decode_step(const fast_tts_decode_args *args);

/* sample.c: one sampling step of rows that all keep their top k <= FAST_TTS_SAMPLE_MAX_K tokens. Arrays are dense,
 * row-major, for the step's rows only. */
#define FAST_TTS_SAMPLE_MAX_K 256
typedef struct {
    const float *logits;      /* (rows, books, vocab) */
    int64_t rows, books, vocab;
    const float *temperature; /* (rows, books), 1 where greedy */
    const uint8_t *greedy;    /* (rows, books): take the first kept token */
    const float *penalty;     /* (rows,) repetition penalty */
    const float *counts;      /* (rows, books, vocab) each token's count in the row's window; NULL: no penalty */
    const float *top_p;       /* (rows,) 1 keeps all */
    const int64_t *k_eff;     /* (rows,) 1..FAST_TTS_SAMPLE_MAX_K */
    const int64_t *min_keep;  /* (rows,) top-p keeps at least these */
    const uint8_t *blocked;   /* (rows, vocab) tokens not allowed at this step (stop ids before min_new); or NULL */
    const uint8_t *use_noise; /* (rows,) the row samples argmax(probs / noise), else by inverse CDF */
    const float *noise;       /* (rows, books, vocab) Exp(1) noise, read for rows with use_noise; or NULL */
    const double *uniforms;   /* (rows, books) in [0, 1), read for the other rows */
    float *scratch;           /* vocab floats of work space */
    int64_t *tokens;          /* (rows, books) out */
} fast_tts_sample_args;
void fast_tts_sample_top_k(const fast_tts_sample_args *args);
/* END DECLARATIONS */

#include <stddef.h>

/* bf16_matmul.c: tiles first..last-1 of a product over a packed weight, and the whole product shared out over the
 * pool by tiles. */
typedef void (*fast_tts_tile_range_fn)(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m,
                                       int64_t n, int64_t k, int float_out, int64_t first, int64_t last);
void fast_tts_share_tiles(fast_tts_tile_range_fn range, const uint16_t *x, const void *packed, const float *bias,
                          void *y, int64_t m, int64_t n, int64_t k, int float_out, int threads);

/* grouped_matmul.c's packed weights: per tile of 32 outputs, per group, the group's weights and its 32 scales. */
#define FAST_TTS_INT4_BLOCK_BYTES (FAST_TTS_QUANT_GROUP * FAST_TTS_TILE / 2 + FAST_TTS_TILE * 4)
#define FAST_TTS_INT8_BLOCK_BYTES (FAST_TTS_QUANT_GROUP * FAST_TTS_TILE + FAST_TTS_TILE * 4)
#define FAST_TTS_QUANT_PREFETCH_AHEAD 2048 /* bytes of them that the grouped products prefetch ahead (a hint only) */

/* grouped_matmul.c: tiles first..last-1 of fast_tts_matmul_int4's product. */
void fast_tts_int4_tile_range(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                              int64_t k, int float_out, int64_t first, int64_t last);

#if defined(__linux__) && defined(__x86_64__)
#define FAST_TTS_AMX 1 /* amx_matmul.c has its kernels: the tiles need Linux's permission call */
void fast_tts_amx_tile_range(const uint16_t *x, const uint16_t *packed, const float *bias, void *y, int64_t m,
                             int64_t n, int64_t k, int float_out, int64_t first, int64_t last);
/* grouped_matmul.c: tiles first..last-1 of fast_tts_matmul_int8's product (AMX only). */
void fast_tts_int8_tile_range(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                              int64_t k, int float_out, int64_t first, int64_t last);
/* A grouped product's tiles first..last-1 (`bits` 8 or 4) for m rows already quantized by
 * fast_tts_quantize_groups_int8 (xq: m rows of k int8; x_scales: m rows of k / FAST_TTS_QUANT_GROUP); y (row stride
 * n) starts at the first of those rows. */
void fast_tts_grouped_amx_tiles(int bits, const void *packed, const int8_t *xq, const float *x_scales,
                                const float *bias, void *y, int64_t m, int64_t n, int64_t k, int float_out,
                                int64_t first, int64_t last);
#endif
/* Nonzero when fast_tts_use_amx switched AMX on and the CPU and OS have `feature` (FAST_TTS_CPU_AMXBF16 or
 * FAST_TTS_CPU_AMXINT8). */
int fast_tts_amx_enabled(int feature);
/* FAST_TTS_CPU_AMXBF16 | FAST_TTS_CPU_AMXINT8 as far as the CPU has them and the OS lets this process use the
 * tiles (asking is idempotent); 0 without. */
int fast_tts_amx_available(void);

/* The element-type parts of a decode step, which decode_step.c runs in a fixed order; `matmul` computes tiles
 * first..last-1 of the product. */
typedef struct {
    size_t element; /* bytes per activation element */
    void (*add)(void *hidden, const void *delta, int64_t n);
    void (*rms_norm)(const void *x, const void *weight, void *out, int64_t rows, int64_t dim, float eps);
    void (*matmul)(const void *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n, int64_t k,
                   int64_t first, int64_t last);
    void (*rope_store)(const void *qkv, const void *cos, const void *sin, float *q_out, void *k_cache, void *v_cache,
                       const int64_t *rows, const int64_t *positions, int64_t batch, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t max_seq);
    void (*attend_one)(const float *q, const void *k_cache, const void *v_cache, const int64_t *rows,
                       const int64_t *positions, void *out, float *scores, int64_t task, int64_t heads,
                       int64_t kv_heads, int64_t head_dim, int64_t max_seq, float scale);
    void (*silu_mul)(const void *gate_up, void *out, int64_t rows, int64_t inner);
} fast_tts_step_ops;

extern const fast_tts_step_ops fast_tts_bf16_step_ops; /* decode_ops.c (AVX-512 BF16) */
extern const fast_tts_step_ops fast_tts_f32_step_ops;  /* decode_f32.c (AVX-512 F) */
extern const fast_tts_step_ops fast_tts_int8_step_ops; /* decode_ops.c (AVX-512 BF16 and AMX-INT8) */
extern const fast_tts_step_ops fast_tts_int4_step_ops; /* decode_ops.c (AVX-512 BF16 and VNNI) */

#endif
