/* The bf16 product of bf16_matmul.c through AMX tiles, for CPUs with AMX-BF16 (Sapphire Rapids and later).
 *
 * The packed weight of bf16_matmul.c is already what a `tdpbf16ps` B operand wants: in a tile of 32 output rows,
 * each column pair holds 16 rows x 2 columns for the first half, then the second half, so 16 consecutive column
 * pairs of one half, read with a stride of 128 bytes, are one B tile (16 pairs x 16 outputs). A tile of up to 16
 * activation rows x 32 columns is the A operand, and two accumulator tiles hold the tile's 32 outputs per row.
 * Each output is its row's own dot product whatever the other rows are, so a row's result does not depend on the
 * batch it is in. The vector kernel spends one `vdpbf16ps` per activation row per weight load, which made a batch of
 * 8 compute-bound; here a batch of 16 costs what one row does, the time it takes to stream the weights.
 *
 * Linux hands out the tile registers only to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM), which
 * fast_tts_amx_available does once; every call configures the tiles on its own thread and releases them after.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "fast_tts_kernels.h"

#ifdef FAST_TTS_AMX
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")

#define TILE FAST_TTS_TILE
#define ROWS 16    /* activation rows per A tile */
#define COLUMNS 32 /* input columns per A tile: 64 bytes of bf16 */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int fast_tts_amx_available(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    int tile = (edx >> 24) & 1, bf16 = (edx >> 22) & 1;
    return tile && bf16 && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} tile_config;

/* tile registers (literal numbers: the intrinsics paste them into the instruction) */
#define OUT_LO 0 /* the tile's first 16 outputs per row, float32 */
#define OUT_HI 1
#define X_TILE 2 /* activations */
#define W_LO 3   /* weights of the first 16 outputs */
#define W_HI 4

static void configure(int rows) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = OUT_LO; t <= X_TILE; t++) c.rows[t] = (uint8_t)rows, c.bytes_per_row[t] = 64;
    for (int t = W_LO; t <= W_HI; t++) c.rows[t] = COLUMNS / 2, c.bytes_per_row[t] = 64;
    _tile_loadconfig(&c);
}

/* Tiles first..last-1 of fast_tts_matmul_tile_range's product, for k % 32 == 0. */
void fast_tts_amx_tile_range(const uint16_t *x, const uint16_t *packed, const float *bias, void *y, int64_t m,
                             int64_t n, int64_t k, int float_out, int64_t first, int64_t last) {
    float sums[2][ROWS * 16];
    int configured = 0;
    for (int64_t t = first; t < last; t++) {
        const uint16_t *tile = packed + t * TILE * k;
        __m512 bias_lo = bias ? _mm512_loadu_ps(bias + t * TILE) : _mm512_setzero_ps();
        __m512 bias_hi = bias ? _mm512_loadu_ps(bias + t * TILE + 16) : _mm512_setzero_ps();
        for (int64_t row = 0; row < m; row += ROWS) {
            int rows = (int)(m - row < ROWS ? m - row : ROWS);
            if (rows != configured) configure(rows), configured = rows;
            _tile_zero(OUT_LO);
            _tile_zero(OUT_HI);
            for (int64_t col = 0; col < k; col += COLUMNS) {
                const uint16_t *w = tile + col * TILE;
                _tile_loadd(X_TILE, x + row * k + col, k * 2);
                _tile_loadd(W_LO, w, 2 * TILE * 2);
                _tile_loadd(W_HI, w + 32, 2 * TILE * 2);
                _tile_dpbf16ps(OUT_LO, X_TILE, W_LO);
                _tile_dpbf16ps(OUT_HI, X_TILE, W_HI);
            }
            _tile_stored(OUT_LO, sums[0], 64);
            _tile_stored(OUT_HI, sums[1], 64);
            for (int b = 0; b < rows; b++) {
                __m512 lo = _mm512_add_ps(_mm512_loadu_ps(sums[0] + 16 * b), bias_lo);
                __m512 hi = _mm512_add_ps(_mm512_loadu_ps(sums[1] + 16 * b), bias_hi);
                size_t offset = (size_t)((row + b) * n + t * TILE);
                if (float_out) {
                    _mm512_storeu_ps((float *)y + offset, lo);
                    _mm512_storeu_ps((float *)y + offset + 16, hi);
                } else { /* round to nearest even, like a bf16 cast */
                    uint16_t *yh = (uint16_t *)y + offset;
                    _mm256_storeu_si256((__m256i *)yh, (__m256i)_mm512_cvtneps_pbh(lo));
                    _mm256_storeu_si256((__m256i *)(yh + 16), (__m256i)_mm512_cvtneps_pbh(hi));
                }
            }
        }
    }
    if (configured) _tile_release();
}

#else

int fast_tts_amx_available(void) { return 0; } /* AMX needs Linux's permission call */

#endif
