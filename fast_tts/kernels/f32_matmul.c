/* float32 matrix x weight-transpose product for decode-sized batches on CPUs with AVX-512.
 *
 * The float32 twin of bf16_matmul.c, for float32 models (the `Chat` drop-in, the MegaTTS3 aligner): oneDNN's
 * prepacked float32 path reads the weights at about half the memory bandwidth at batch 1. The weight is repacked
 * once into tiles of 32 output rows; inside a tile, for each input column, the column's 32 weights (two 512-bit
 * loads), so one pass reads the weight strictly in sequence. Each activation row adds one broadcast input times
 * those two vectors to accumulators that are already the outputs. Up to 8 rows share each weight load; more rows
 * take further passes over a tile that is by then in cache. Each output is a sequential float32 sum over the input
 * columns. Tiles are shared out over the threads of pool.c. The loop prefetches the weights PREFETCH_AHEAD columns
 * ahead (the hardware prefetcher alone left a single sequential stream per thread well short of the bandwidth); a
 * prefetch is only a hint, so the sums are unchanged.
 */
#include <immintrin.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

#pragma GCC target("avx512f")

#define TILE FAST_TTS_TILE
#define MAX_ROWS 8
#define PREFETCH_AHEAD 16 /* columns of 128 bytes: 2 KiB ahead */

/* Reorder a row-major (n, k) float32 weight into the tiled layout above; n % 32 == 0. */
void fast_tts_pack_f32(const float *weight, float *packed, int64_t n, int64_t k) {
    for (int64_t tile = 0; tile < n; tile += TILE)
        for (int64_t col = 0; col < k; col++)
            for (int64_t r = 0; r < TILE; r++) packed[tile * k + col * TILE + r] = weight[(tile + r) * k + col];
}

static inline __attribute__((always_inline)) void tile_product_f32(const float *x, int64_t k, const float *tile,
                                                                    const float *bias, float *y, int64_t ldy,
                                                                    int rows) {
    __m512 lo[MAX_ROWS], hi[MAX_ROWS];
    for (int b = 0; b < rows; b++) lo[b] = hi[b] = _mm512_setzero_ps();
    for (int64_t col = 0; col < k; col++) {
        _mm_prefetch((const char *)(tile + (col + PREFETCH_AHEAD) * TILE), _MM_HINT_T0);
        _mm_prefetch((const char *)(tile + (col + PREFETCH_AHEAD) * TILE + 16), _MM_HINT_T0);
        __m512 w_lo = _mm512_loadu_ps(tile + col * TILE), w_hi = _mm512_loadu_ps(tile + col * TILE + 16);
        for (int b = 0; b < rows; b++) {
            __m512 xb = _mm512_set1_ps(x[b * k + col]);
            lo[b] = _mm512_fmadd_ps(w_lo, xb, lo[b]);
            hi[b] = _mm512_fmadd_ps(w_hi, xb, hi[b]);
        }
    }
    __m512 bias_lo = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    __m512 bias_hi = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
    for (int b = 0; b < rows; b++) {
        _mm512_storeu_ps(y + b * ldy, _mm512_add_ps(lo[b], bias_lo));
        _mm512_storeu_ps(y + b * ldy + 16, _mm512_add_ps(hi[b], bias_hi));
    }
}

typedef struct {
    const float *x, *packed, *bias;
    float *y;
    int64_t m, n, k;
} matmul_job;

/* Tiles first..last-1 of fast_tts_matmul_f32's product. */
void fast_tts_matmul_f32_tile_range(const float *x, const float *packed, const float *bias, float *y, int64_t m,
                                    int64_t n, int64_t k, int64_t first, int64_t last) {
    for (int64_t t = first; t < last; t++) {
        const float *tile = packed + t * TILE * k;
        const float *tile_bias = bias ? bias + t * TILE : NULL;
        for (int64_t row = 0; row < m; row += MAX_ROWS) {
            int rows = (int)(m - row < MAX_ROWS ? m - row : MAX_ROWS);
            const float *xr = x + row * k;
            float *yr = y + row * n + t * TILE;
            /* constant row counts let the compiler keep every accumulator in a register */
            switch (rows) {
                case 8: tile_product_f32(xr, k, tile, tile_bias, yr, n, 8); break;
                case 7: tile_product_f32(xr, k, tile, tile_bias, yr, n, 7); break;
                case 6: tile_product_f32(xr, k, tile, tile_bias, yr, n, 6); break;
                case 5: tile_product_f32(xr, k, tile, tile_bias, yr, n, 5); break;
                case 4: tile_product_f32(xr, k, tile, tile_bias, yr, n, 4); break;
                case 3: tile_product_f32(xr, k, tile, tile_bias, yr, n, 3); break;
                case 2: tile_product_f32(xr, k, tile, tile_bias, yr, n, 2); break;
                default: tile_product_f32(xr, k, tile, tile_bias, yr, n, 1); break;
            }
        }
    }
}

static void matmul_thread(void *arg, int id, int threads) {
    const matmul_job *job = arg;
    int64_t tiles = job->n / TILE;
    fast_tts_matmul_f32_tile_range(job->x, job->packed, job->bias, job->y, job->m, job->n, job->k,
                                   tiles * id / threads, tiles * (id + 1) / threads);
}

/* y (m, n) = x (m, k) @ weight.T (+ bias, may be NULL), all float32; weight packed by fast_tts_pack_f32. */
void fast_tts_matmul_f32(const float *x, const float *packed, const float *bias, float *y, int64_t m, int64_t n,
                         int64_t k, int threads) {
    matmul_job job = {x, packed, bias, y, m, n, k};
    fast_tts_run_parallel(matmul_thread, &job, threads);
}
