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

int fast_tts_cpu_features(void);

/* pool.c: run fn(arg, i, threads) for i = 0..threads-1 (i = 0 on the caller); returns when all are done. */
typedef void (*fast_tts_job_fn)(void *arg, int thread, int threads);
void fast_tts_run_parallel(fast_tts_job_fn fn, void *arg, int threads);
void fast_tts_wait_a_little(int *spins);

/* bf16_matmul.c */
void fast_tts_pack_bf16(const uint16_t *weight, uint16_t *packed, int64_t n, int64_t k);
void fast_tts_matmul_bf16(const uint16_t *x, const uint16_t *packed, const float *bias, void *y, int64_t m, int64_t n,
                          int64_t k, int float_out, int threads);
void fast_tts_matmul_tile_range(const uint16_t *x, const uint16_t *packed, const float *bias, void *y, int64_t m,
                                int64_t n, int64_t k, int float_out, int64_t first, int64_t last);

/* f32_matmul.c */
void fast_tts_pack_f32(const float *weight, float *packed, int64_t n, int64_t k);
void fast_tts_matmul_f32(const float *x, const float *packed, const float *bias, float *y, int64_t m, int64_t n,
                         int64_t k, int threads);

/* decode_ops.c: one decoder layer's weights (packed by fast_tts_pack_bf16; biases float32 or NULL) and its cache. */
typedef struct {
    const uint16_t *input_norm, *post_norm;
    const uint16_t *qkv, *o, *gate_up, *down;
    const float *qkv_bias, *o_bias, *gate_up_bias, *down_bias;
    uint16_t *k_cache, *v_cache;
} fast_tts_layer;

/* Work buffers of one step, sized for `batch` rows (scores: batch * heads * max_seq floats). */
typedef struct {
    uint16_t *normed, *qkv, *attended, *projected, *gate_up, *activated;
    float *q, *scores;
} fast_tts_step_buffers;

/* Everything one decode step reads and writes. */
typedef struct {
    const fast_tts_layer *layers;
    int64_t n_layers;
    const uint16_t *final_norm;
    uint16_t *hidden;     /* (batch, hidden_size) input, overwritten by the residual stream */
    uint16_t *out;        /* (batch, hidden_size) final-norm hidden states */
    const uint16_t *cos, *sin; /* (batch, head_dim) rotary tables at each row's position */
    const int64_t *rows;       /* (batch,) the cache row of each activation row */
    const int64_t *positions;  /* (batch,) each row's new position */
    const fast_tts_step_buffers *buffers;
    int64_t batch, hidden_size, inner, heads, kv_heads, head_dim, max_seq;
    float eps, scale;
    int threads;
} fast_tts_decode_args;

void fast_tts_decode_step(const fast_tts_decode_args *args);
/* END DECLARATIONS */

#endif
