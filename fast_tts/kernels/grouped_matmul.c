/* Products with weights quantized in groups: 4-bit on AVX-512 VNNI (a quarter of bf16's bytes per step) and int8
 * on AMX-INT8 (half of them).
 *
 * Weights: each output row's inputs in groups of FAST_TTS_QUANT_GROUP (64), each group symmetric (4-bit: -8..7
 * times a float32 scale max|w| / 7; int8: -127..127 times max|w| / 127), quantized in fast_tts/kernels/linear.py:
 * 4.5 or 8.5 bits per weight, as llama.cpp's q4_0 and q8_0. Activations: each row's groups quantized to int8 here
 * (scale max|x| / 127, round to nearest even). A group's sum is exact in int32, so the result is, in float32 and in
 * this order,
 *   y = sum over groups g of (float(sum_g) * (x_scale_g * w_scale_g)), then + bias,
 * rounded to bf16 or kept float32; tests/test_native_kernels.py repeats it in torch and compares bit for bit.
 *
 * Packed layouts, per tile of 32 output rows, per group: the weights, then the tile's 32 group scales (float32), so
 * one pass streams the weight in order. The weights are input quads, 16 per group: quad q holds 16 output rows x 4
 * inputs (byte c * 4 + i: row c, input 4q + i of the group), which is one row of an AMX B tile.
 * - int8: the quads of rows 0..15 (1024 bytes), then those of rows 16..31: two B tiles as they stand.
 * - 4-bit: 64 bytes per quad, byte c * 4 + i holding (weight + 8) of row c in its low nibble and of row c + 16 in
 *   its high one. A mask and a shift turn those 64 bytes into two `vpdpbusd` operands (unsigned 0..15 for 16 rows x
 *   4 inputs each) whose int32 lanes are already the outputs; the +8 offset comes off as 8 x (the group's activation
 *   sum), computed with the quantized activations. At more than 4 rows, where AMX-INT8 is on (fast_tts_use_amx),
 *   amx_matmul.c computes the same numbers from the same layout, 16 rows at a time.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "fast_tts_kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni")
#pragma GCC optimize("fp-contract=off") /* each product and sum rounded on its own, as torch does */

#include "tile_store.h"

#define TILE FAST_TTS_TILE
#define GROUP FAST_TTS_QUANT_GROUP
#define WEIGHT_BYTES (GROUP * TILE / 2) /* one group of a 4-bit tile: 1024 bytes of nibbles, then its 32 scales */
#define BLOCK_BYTES FAST_TTS_INT4_BLOCK_BYTES
#define MAX_GROUPS (FAST_TTS_MAX_QUANT_COLUMNS / GROUP)
#define MAX_ROWS 4        /* activation rows per pass over a tile: 16 accumulators stay in registers */
#define QUANTIZED_ROWS 32 /* activation rows quantized at a time, on the stack */

static inline __attribute__((always_inline)) __m512 load_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* One activation row (k bf16) to int8 groups `q`, with each group's scale max|x| / 127 (0 for a zero group) and
 * the sum of its int8 values. */
void fast_tts_quantize_groups_int8(const uint16_t *x, int8_t *q, float *scales, int32_t *sums, int64_t k) {
    for (int64_t g = 0; g < k / GROUP; g++) {
        const uint16_t *xg = x + g * GROUP;
        __m512 top = _mm512_setzero_ps();
        for (int i = 0; i < GROUP; i += 16) top = _mm512_max_ps(top, _mm512_abs_ps(load_bf16x16(xg + i)));
        float amax = _mm512_reduce_max_ps(top);
        __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m512i total = _mm512_setzero_si512();
        for (int i = 0; i < GROUP; i += 16) { /* cvtps_epi32 rounds to nearest even (the default MXCSR) */
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load_bf16x16(xg + i), inverse));
            v = _mm512_max_epi32(_mm512_min_epi32(v, _mm512_set1_epi32(127)), _mm512_set1_epi32(-128));
            total = _mm512_add_epi32(total, v);
            _mm_storeu_si128((__m128i *)(q + g * GROUP + i), _mm512_cvtepi32_epi8(v));
        }
        scales[g] = amax / 127.0f;
        sums[g] = _mm512_reduce_add_epi32(total);
    }
}

/* `rows` activation rows times one tile: the float32 results of its 32 outputs per row, + bias, stored. */
static inline __attribute__((always_inline)) void tile_rows(const uint8_t *tile, int64_t k, const int8_t *xq,
                                                             const float *x_scales, const int32_t *x_sums,
                                                             const float *bias, void *y, int64_t ldy, int rows,
                                                             int float_out) {
    const int64_t groups = k / GROUP;
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    __m512 acc_lo[MAX_ROWS], acc_hi[MAX_ROWS];
    for (int b = 0; b < rows; b++) acc_lo[b] = acc_hi[b] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *block = tile + g * BLOCK_BYTES;
        __m512i sum_lo[MAX_ROWS], sum_hi[MAX_ROWS];
        for (int b = 0; b < rows; b++) sum_lo[b] = sum_hi[b] = _mm512_setzero_si512();
        for (int quad = 0; quad < GROUP / 4; quad++) {
            _mm_prefetch((const char *)(block + quad * 64 + FAST_TTS_QUANT_PREFETCH_AHEAD), _MM_HINT_T0);
            __m512i v = _mm512_loadu_si512(block + quad * 64);
            __m512i w_lo = _mm512_and_si512(v, nibble);
            __m512i w_hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
            for (int b = 0; b < rows; b++) {
                int32_t four;
                memcpy(&four, xq + b * k + g * GROUP + quad * 4, sizeof four);
                __m512i xb = _mm512_set1_epi32(four);
                sum_lo[b] = _mm512_dpbusd_epi32(sum_lo[b], w_lo, xb);
                sum_hi[b] = _mm512_dpbusd_epi32(sum_hi[b], w_hi, xb);
            }
        }
        const float *w_scales = (const float *)(block + WEIGHT_BYTES);
        __m512 scale_lo = _mm512_loadu_ps(w_scales), scale_hi = _mm512_loadu_ps(w_scales + 16);
        for (int b = 0; b < rows; b++) {
            __m512i offset = _mm512_set1_epi32(8 * x_sums[b * groups + g]); /* the weights' +8 */
            __m512 xs = _mm512_set1_ps(x_scales[b * groups + g]);
            __m512 lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum_lo[b], offset));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum_hi[b], offset));
            acc_lo[b] = _mm512_add_ps(acc_lo[b], _mm512_mul_ps(lo, _mm512_mul_ps(xs, scale_lo)));
            acc_hi[b] = _mm512_add_ps(acc_hi[b], _mm512_mul_ps(hi, _mm512_mul_ps(xs, scale_hi)));
        }
    }
    __m512 bias_lo = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    __m512 bias_hi = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
    for (int b = 0; b < rows; b++) {
        store_tile_row(y, (size_t)(b * ldy), _mm512_add_ps(acc_lo[b], bias_lo), _mm512_add_ps(acc_hi[b], bias_hi),
                       float_out);
    }
}

/* Tiles first..last-1 of y (m, n) = x (m, k) @ dequantized weight.T (+ bias) for `bits` 4 or 8; k % 64 == 0 and
 * k <= FAST_TTS_MAX_QUANT_COLUMNS; `packed` as described above. y is bf16, or float32 when float_out is set.
 * Activations are quantized QUANTIZED_ROWS at a time on the stack, and each such chunk reads the weight once. */
static void grouped_tile_range(int bits, const uint16_t *x, const void *packed, const float *bias, void *y,
                               int64_t m, int64_t n, int64_t k, int float_out, int64_t first, int64_t last) {
    int8_t quantized[QUANTIZED_ROWS * FAST_TTS_MAX_QUANT_COLUMNS] __attribute__((aligned(64)));
    float x_scales[QUANTIZED_ROWS * MAX_GROUPS];
    int32_t x_sums[QUANTIZED_ROWS * MAX_GROUPS];
    const int64_t groups = k / GROUP;
    for (int64_t chunk = 0; chunk < m; chunk += QUANTIZED_ROWS) {
        int64_t chunk_rows = m - chunk < QUANTIZED_ROWS ? m - chunk : QUANTIZED_ROWS;
        for (int64_t b = 0; b < chunk_rows; b++)
            fast_tts_quantize_groups_int8(x + (chunk + b) * k, quantized + b * k, x_scales + b * groups,
                                          x_sums + b * groups, k);
#ifdef FAST_TTS_AMX
        if (bits == 8 || (chunk_rows > MAX_ROWS && fast_tts_amx_enabled(FAST_TTS_CPU_AMXINT8))) {
            size_t offset = (size_t)(chunk * n);
            void *yc = float_out ? (void *)((float *)y + offset) : (void *)((uint16_t *)y + offset);
            fast_tts_grouped_amx_tiles(bits, packed, quantized, x_scales, bias, yc, chunk_rows, n, k, float_out,
                                       first, last);
            continue;
        }
#endif
        for (int64_t t = first; t < last; t++) {
            const uint8_t *tile = (const uint8_t *)packed + t * (k / GROUP) * BLOCK_BYTES;
            const float *tile_bias = bias ? bias + t * TILE : NULL;
            for (int64_t row = 0; row < chunk_rows; row += MAX_ROWS) {
                int rows = (int)(chunk_rows - row < MAX_ROWS ? chunk_rows - row : MAX_ROWS);
                const int8_t *xq = quantized + row * k;
                const float *xs = x_scales + row * groups;
                const int32_t *xsum = x_sums + row * groups;
                size_t offset = (size_t)((chunk + row) * n + t * TILE);
                void *yr = float_out ? (void *)((float *)y + offset) : (void *)((uint16_t *)y + offset);
                /* constant row counts let the compiler keep every accumulator in a register */
                switch (rows) {
                    case 4: tile_rows(tile, k, xq, xs, xsum, tile_bias, yr, n, 4, float_out); break;
                    case 3: tile_rows(tile, k, xq, xs, xsum, tile_bias, yr, n, 3, float_out); break;
                    case 2: tile_rows(tile, k, xq, xs, xsum, tile_bias, yr, n, 2, float_out); break;
                    default: tile_rows(tile, k, xq, xs, xsum, tile_bias, yr, n, 1, float_out); break;
                }
            }
        }
    }
}

void fast_tts_int4_tile_range(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                              int64_t k, int float_out, int64_t first, int64_t last) {
    grouped_tile_range(4, x, packed, bias, y, m, n, k, float_out, first, last);
}

void fast_tts_matmul_int4(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                          int64_t k, int float_out, int threads) {
    fast_tts_share_tiles(fast_tts_int4_tile_range, x, packed, bias, y, m, n, k, float_out, threads);
}

#ifdef FAST_TTS_AMX
void fast_tts_int8_tile_range(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                              int64_t k, int float_out, int64_t first, int64_t last) {
    grouped_tile_range(8, x, packed, bias, y, m, n, k, float_out, first, last);
}

void fast_tts_matmul_int8(const uint16_t *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                          int64_t k, int float_out, int threads) {
    fast_tts_share_tiles(fast_tts_int8_tile_range, x, packed, bias, y, m, n, k, float_out, threads);
}
#endif
