/* bf16 matrix x weight-transpose product for decode-sized batches on CPUs with AVX-512 BF16.
 *
 * Decode multiplies a few activation rows by every weight of the model, so its speed is the speed at which the
 * weights stream from memory. The weight is repacked once so that one pass reads it strictly sequentially:
 * tiles of 32 output rows; inside a tile, for each pair of input columns, 16 rows x 2 columns for the first half
 * of the tile, then the same for the second half (128 bytes). A tile's two 512-bit loads per column pair feed one
 * `vdpbf16ps` per activation row, which accumulates in float32 lanes that are already the outputs, so nothing
 * needs a horizontal sum. Up to 8 activation rows share each weight load; more rows take further passes over a
 * tile that is by then in cache. Tiles are shared out over the threads of pool.c. The loop prefetches the weights
 * PREFETCH_AHEAD column pairs ahead, as f32_matmul.c does (a hint only: the sums are unchanged). Where the CPU has
 * AMX, amx_matmul.c computes the same product from the same layout (fast_tts_use_amx switches it).
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "fast_tts_kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

#include "tile_store.h"

#define TILE FAST_TTS_TILE
#define MAX_ROWS 8
#define PREFETCH_AHEAD 16 /* column pairs of 128 bytes: 2 KiB ahead */

/* Reorder a row-major (n, k) bf16 weight into the tiled layout above; n % 32 == 0 and k % 2 == 0. */
void fast_tts_pack_bf16(const uint16_t *weight, uint16_t *packed, int64_t n, int64_t k) {
    for (int64_t tile = 0; tile < n; tile += TILE)
        for (int64_t col = 0; col < k; col += 2)
            for (int64_t r = 0; r < TILE; r++) {
                uint16_t *dst = packed + tile * k + col * TILE + (r / 16) * 32 + (r % 16) * 2;
                const uint16_t *src = weight + (tile + r) * k + col;
                dst[0] = src[0];
                dst[1] = src[1];
            }
}

static inline __attribute__((always_inline)) void tile_product(const uint16_t *x, int64_t k, const uint16_t *tile,
                                                                const float *bias, void *y, int64_t ldy, int rows,
                                                                int float_out) {
    __m512 lo[MAX_ROWS], hi[MAX_ROWS];
    for (int b = 0; b < rows; b++) lo[b] = hi[b] = _mm512_setzero_ps();
    for (int64_t col = 0; col < k; col += 2) {
        const uint16_t *w = tile + col * TILE;
        _mm_prefetch((const char *)(w + PREFETCH_AHEAD * 2 * TILE), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + PREFETCH_AHEAD * 2 * TILE + 32), _MM_HINT_T0);
        __m512bh w_lo = (__m512bh)_mm512_loadu_si512(w), w_hi = (__m512bh)_mm512_loadu_si512(w + 32);
        for (int b = 0; b < rows; b++) {
            uint32_t pair;
            memcpy(&pair, x + b * k + col, sizeof pair);
            __m512bh xb = (__m512bh)_mm512_set1_epi32((int)pair);
            lo[b] = _mm512_dpbf16_ps(lo[b], w_lo, xb);
            hi[b] = _mm512_dpbf16_ps(hi[b], w_hi, xb);
        }
    }
    __m512 bias_lo = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    __m512 bias_hi = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
    for (int b = 0; b < rows; b++)
        store_tile_row(y, (size_t)(b * ldy), _mm512_add_ps(lo[b], bias_lo), _mm512_add_ps(hi[b], bias_hi), float_out);
}

/* Tiles first..last-1 of y (m, n) = x (m, k) @ weight.T (+ bias, float32, may be NULL); weight packed by
 * fast_tts_pack_bf16. y is bf16, or float32 when float_out is set (logits). */
void fast_tts_matmul_tile_range(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m,
                                int64_t n, int64_t k, int float_out, int64_t first, int64_t last) {
#ifdef FAST_TTS_AMX
    if (k % 32 == 0 && fast_tts_amx_enabled(FAST_TTS_CPU_AMXBF16)) {
        fast_tts_amx_tile_range(x, packed, bias, y, m, n, k, float_out, first, last);
        return;
    }
#endif
    for (int64_t t = first; t < last; t++) {
        const uint16_t *tile = (const uint16_t *)packed + t * TILE * k;
        const float *tile_bias = bias ? bias + t * TILE : NULL;
        for (int64_t row = 0; row < m; row += MAX_ROWS) {
            int rows = (int)(m - row < MAX_ROWS ? m - row : MAX_ROWS);
            const uint16_t *xr = x + row * k;
            size_t offset = (size_t)(row * n + t * TILE);
            void *yr = float_out ? (void *)((float *)y + offset) : (void *)((uint16_t *)y + offset);
            /* constant row counts let the compiler keep every accumulator in a register */
            switch (rows) {
                case 8: tile_product(xr, k, tile, tile_bias, yr, n, 8, float_out); break;
                case 7: tile_product(xr, k, tile, tile_bias, yr, n, 7, float_out); break;
                case 6: tile_product(xr, k, tile, tile_bias, yr, n, 6, float_out); break;
                case 5: tile_product(xr, k, tile, tile_bias, yr, n, 5, float_out); break;
                case 4: tile_product(xr, k, tile, tile_bias, yr, n, 4, float_out); break;
                case 3: tile_product(xr, k, tile, tile_bias, yr, n, 3, float_out); break;
                case 2: tile_product(xr, k, tile, tile_bias, yr, n, 2, float_out); break;
                default: tile_product(xr, k, tile, tile_bias, yr, n, 1, float_out); break;
            }
        }
    }
}

typedef struct {
    fast_tts_tile_range_fn range;
    const uint16_t *x;
    const void *packed;
    const float *bias;
    void *y;
    int64_t m, n, k;
    int float_out;
} matmul_job;

static void matmul_thread(void *arg, int id, int threads) {
    const matmul_job *job = arg;
    int64_t tiles = job->n / TILE;
    job->range(job->x, job->packed, job->bias, job->y, job->m, job->n, job->k, job->float_out, tiles * id / threads,
               tiles * (id + 1) / threads);
}

void fast_tts_share_tiles(fast_tts_tile_range_fn range, const uint16_t *x, const void *packed, const float *bias,
                          void *y, int64_t m, int64_t n, int64_t k, int float_out, int threads) {
    matmul_job job = {range, x, packed, bias, y, m, n, k, float_out};
    fast_tts_run_parallel(matmul_thread, &job, threads);
}

/* The whole product, its tiles shared out over `threads` pool threads. */
void fast_tts_matmul_bf16(const uint16_t *x, const uint16_t *packed, const float *bias, void *y, int64_t m, int64_t n,
                          int64_t k, int float_out, int threads) {
    fast_tts_share_tiles(fast_tts_matmul_tile_range, x, packed, bias, y, m, n, k, float_out, threads);
}
