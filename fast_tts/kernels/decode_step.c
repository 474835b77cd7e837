/* A whole decode step (one new position per row) of a Llama/Qwen2 decoder in one call and one parallel region.
 *
 * Between its matmuls a decoder layer runs about fifty tiny torch operations per step (norms, rotary embedding,
 * cache writes, attention, SwiGLU), and every torch or ctypes call would start the threads again; at batch 1 that
 * dispatch cost a third of the step. Here the step's order of operations and its barriers are written once; the
 * operations themselves come from a table per kind of step: bf16, int8 or 4-bit weights with bf16 activations
 * (decode_ops.c), or float32 (decode_f32.c).
 */
#include <stdatomic.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

typedef struct {
    atomic_int arrived, phase;
} step_barrier;

/* Wait until all `threads` threads of the job arrive; `phase` is the caller's own count of barriers passed. */
static void barrier_wait(step_barrier *b, int threads, int *phase) {
    int mine = *phase;
    *phase = mine + 1;
    if (threads == 1) return;
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == threads - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, mine + 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) == mine;) fast_tts_wait_a_little(&spins);
}

/* [first, last) of n items for thread `id` of `threads`. */
static inline void share(int64_t n, int id, int threads, int64_t *first, int64_t *last) {
    *first = n * id / threads;
    *last = n * (id + 1) / threads;
}

typedef struct {
    const fast_tts_decode_args *args;
    const fast_tts_step_ops *ops;
    step_barrier barrier;
} step_job;

static void matmul_share(const fast_tts_step_ops *ops, const void *x, const void *packed, const float *bias,
                         void *y, int64_t m, int64_t n, int64_t k, int id, int threads) {
    int64_t first, last;
    share(n / FAST_TTS_TILE, id, threads, &first, &last);
    ops->matmul(x, packed, bias, y, m, n, k, first, last);
}

static void step_thread(void *arg, int id, int threads) {
    step_job *job = arg;
    const fast_tts_decode_args *a = job->args;
    const fast_tts_step_ops *ops = job->ops;
    const fast_tts_step_buffers *buf = a->buffers;
    size_t es = ops->element;
    int64_t batch = a->batch, hs = a->hidden_size, heads = a->heads, kv = a->kv_heads, hd = a->head_dim;
    int64_t qkv_width = (heads + 2 * kv) * hd, first, last;
    int phase = 0;
    for (int64_t i = 0; i < a->n_layers; i++) {
        const fast_tts_layer *layer = a->layers + i;
        if (id == 0) {
            if (i > 0) ops->add(a->hidden, buf->projected, batch * hs); /* the previous layer's MLP residual */
            ops->rms_norm(a->hidden, layer->input_norm, buf->normed, batch, hs, a->eps);
        }
        barrier_wait(&job->barrier, threads, &phase);
        matmul_share(ops, buf->normed, layer->qkv, layer->qkv_bias, buf->qkv, batch, qkv_width, hs, id, threads);
        barrier_wait(&job->barrier, threads, &phase);
        if (id == 0)
            ops->rope_store(buf->qkv, a->cos, a->sin, buf->q, layer->k_cache, layer->v_cache, a->rows, a->positions,
                            batch, heads, kv, hd, a->max_seq);
        barrier_wait(&job->barrier, threads, &phase);
        share(batch * heads, id, threads, &first, &last);
        for (int64_t task = first; task < last; task++)
            ops->attend_one(buf->q, layer->k_cache, layer->v_cache, a->rows, a->positions, buf->attended,
                            buf->scores + task * a->max_seq, task, heads, kv, hd, a->max_seq, a->scale);
        barrier_wait(&job->barrier, threads, &phase);
        matmul_share(ops, buf->attended, layer->o, layer->o_bias, buf->projected, batch, hs, heads * hd, id, threads);
        barrier_wait(&job->barrier, threads, &phase);
        if (id == 0) {
            ops->add(a->hidden, buf->projected, batch * hs);
            ops->rms_norm(a->hidden, layer->post_norm, buf->normed, batch, hs, a->eps);
        }
        barrier_wait(&job->barrier, threads, &phase);
        matmul_share(ops, buf->normed, layer->gate_up, layer->gate_up_bias, buf->gate_up, batch, 2 * a->inner, hs,
                     id, threads);
        barrier_wait(&job->barrier, threads, &phase);
        share(batch, id, threads, &first, &last);
        ops->silu_mul((char *)buf->gate_up + first * 2 * a->inner * es, (char *)buf->activated + first * a->inner * es,
                      last - first, a->inner);
        barrier_wait(&job->barrier, threads, &phase);
        matmul_share(ops, buf->activated, layer->down, layer->down_bias, buf->projected, batch, hs, a->inner, id, threads);
        barrier_wait(&job->barrier, threads, &phase);
    }
    if (id == 0) {
        if (a->n_layers > 0) ops->add(a->hidden, buf->projected, batch * hs);
        ops->rms_norm(a->hidden, a->final_norm, a->out, batch, hs, a->eps);
    }
}

static const fast_tts_step_ops *ops_of(int kind) {
    if (kind == FAST_TTS_STEP_INT4) return &fast_tts_int4_step_ops;
#ifdef FAST_TTS_AMX
    if (kind == FAST_TTS_STEP_INT8) return &fast_tts_int8_step_ops;
#endif
    return kind == FAST_TTS_STEP_FLOAT32 ? &fast_tts_f32_step_ops : &fast_tts_bf16_step_ops;
}

/* A whole decode step through every layer and the final norm: the matmuls, attention and SwiGLU are shared out
 * over `args->threads` pool threads, the norms, rotary embedding and residual adds run on the caller's. The caller
 * checks that the CPU runs the kind's operations. */
void fast_tts_decode_step(const fast_tts_decode_args *args) {
    step_job job = {args, ops_of(args->kind), {0, 0}};
    fast_tts_run_parallel(step_thread, &job, args->threads);
}
