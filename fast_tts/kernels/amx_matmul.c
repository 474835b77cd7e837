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
 * The products with weights quantized in groups (grouped_matmul.c's int8 and 4-bit layouts) run here too, through
 * AMX-INT8: a group of 64 inputs is one `tdpbssd` step, and its exact int32 sums are scaled and added up in float32.
 *
 * Linux hands out the tile registers only to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM), which
 * fast_tts_amx_available does; every call configures the tiles on its own thread and releases them after.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "fast_tts_kernels.h"

#ifdef FAST_TTS_AMX
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16,amx-int8")
#pragma GCC optimize("fp-contract=off") /* the grouped products' scaling rounded step by step, as torch does */

#include "tile_store.h"

#define TILE FAST_TTS_TILE
#define ROWS 16    /* activation rows per A tile */
#define COLUMNS 32 /* input columns per A tile: 64 bytes of bf16 */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int fast_tts_amx_available(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    int tile = (edx >> 24) & 1, bf16 = (edx >> 22) & 1, int8 = (edx >> 25) & 1;
    if (!tile || syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 0;
    return (bf16 ? FAST_TTS_CPU_AMXBF16 : 0) | (int8 ? FAST_TTS_CPU_AMXINT8 : 0);
}

static int amx_on; /* the FAST_TTS_CPU_AMX* bits that fast_tts_use_amx switched on */

int fast_tts_use_amx(int on) {
    static int available = -1;
    if (available < 0) available = fast_tts_amx_available();
    amx_on = on ? available : 0;
    return amx_on != 0;
}

int fast_tts_amx_enabled(int feature) { return (amx_on & feature) != 0; }

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

/* Every tile 64 bytes wide: outputs and activations `rows` high, weights 16 (column pairs or quads). */
static void configure(int rows) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = OUT_LO; t <= X_TILE; t++) c.rows[t] = (uint8_t)rows, c.bytes_per_row[t] = 64;
    for (int t = W_LO; t <= W_HI; t++) c.rows[t] = 16, c.bytes_per_row[t] = 64;
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
                store_tile_row(y, (size_t)((row + b) * n + t * TILE), lo, hi, float_out);
            }
        }
    }
    if (configured) _tile_release();
}

/* The grouped products of grouped_matmul.c (`bits` 8 or 4) through AMX-INT8, from the same packed weights and
 * quantized activations, with the same arithmetic: a group's int8 weights are two B tiles as they stand, and 4-bit
 * ones become such tiles when unpacked to signed int8 (nibble - 8), so `tdpbssd` gives the group's exact int32 sums
 * for up to 16 rows at once; the groups are then added up in float32 in the vector kernel's order. */
void fast_tts_grouped_amx_tiles(int bits, const void *packed, const int8_t *xq, const float *x_scales,
                                const float *bias, void *y, int64_t m, int64_t n, int64_t k, int float_out,
                                int64_t first, int64_t last) {
    const int64_t groups = k / FAST_TTS_QUANT_GROUP;
    const int64_t block_bytes = bits == 4 ? FAST_TTS_INT4_BLOCK_BYTES : FAST_TTS_INT8_BLOCK_BYTES;
    const int64_t weight_bytes = FAST_TTS_QUANT_GROUP * TILE * bits / 8; /* then the group's 32 scales */
    const __m512i nibble = _mm512_set1_epi8(0x0f), eight = _mm512_set1_epi8(8);
    int8_t unpacked[2][16 * 64] __attribute__((aligned(64))); /* 4-bit: the group's B tiles, rows 0-15 and 16-31 */
    int32_t sums[2][ROWS * 16];
    float acc[ROWS][TILE];
    int configured = 0;
    for (int64_t t = first; t < last; t++) {
        const uint8_t *tile = (const uint8_t *)packed + t * groups * block_bytes;
        __m512 bias_lo = bias ? _mm512_loadu_ps(bias + t * TILE) : _mm512_setzero_ps();
        __m512 bias_hi = bias ? _mm512_loadu_ps(bias + t * TILE + 16) : _mm512_setzero_ps();
        for (int64_t row = 0; row < m; row += ROWS) {
            int rows = (int)(m - row < ROWS ? m - row : ROWS);
            if (rows != configured) configure(rows), configured = rows;
            memset(acc, 0, sizeof acc);
            for (int64_t g = 0; g < groups; g++) {
                const uint8_t *block = tile + g * block_bytes;
                const void *w_lo = block, *w_hi = block + 16 * 64;
                if (bits == 4) {
                    for (int quad = 0; quad < FAST_TTS_QUANT_GROUP / 4; quad++) {
                        _mm_prefetch((const char *)(block + quad * 64 + FAST_TTS_QUANT_PREFETCH_AHEAD), _MM_HINT_T0);
                        __m512i v = _mm512_loadu_si512(block + quad * 64);
                        __m512i lo = _mm512_sub_epi8(_mm512_and_si512(v, nibble), eight);
                        __m512i hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), nibble), eight);
                        _mm512_store_si512(unpacked[0] + quad * 64, lo);
                        _mm512_store_si512(unpacked[1] + quad * 64, hi);
                    }
                    w_lo = unpacked[0], w_hi = unpacked[1];
                } else {
                    for (int64_t line = 0; line < block_bytes; line += 64)
                        _mm_prefetch((const char *)(block + FAST_TTS_QUANT_PREFETCH_AHEAD + line), _MM_HINT_T0);
                }
                _tile_zero(OUT_LO);
                _tile_zero(OUT_HI);
                _tile_loadd(X_TILE, xq + row * k + g * FAST_TTS_QUANT_GROUP, k);
                _tile_loadd(W_LO, w_lo, 64);
                _tile_loadd(W_HI, w_hi, 64);
                _tile_dpbssd(OUT_LO, X_TILE, W_LO);
                _tile_dpbssd(OUT_HI, X_TILE, W_HI);
                _tile_stored(OUT_LO, sums[0], 64);
                _tile_stored(OUT_HI, sums[1], 64);
                const float *w_scales = (const float *)(block + weight_bytes);
                __m512 scale_lo = _mm512_loadu_ps(w_scales), scale_hi = _mm512_loadu_ps(w_scales + 16);
                for (int b = 0; b < rows; b++) {
                    __m512 xs = _mm512_set1_ps(x_scales[(row + b) * groups + g]);
                    __m512 lo = _mm512_cvtepi32_ps(_mm512_loadu_si512(sums[0] + 16 * b));
                    __m512 hi = _mm512_cvtepi32_ps(_mm512_loadu_si512(sums[1] + 16 * b));
                    lo = _mm512_add_ps(_mm512_loadu_ps(acc[b]), _mm512_mul_ps(lo, _mm512_mul_ps(xs, scale_lo)));
                    hi = _mm512_add_ps(_mm512_loadu_ps(acc[b] + 16), _mm512_mul_ps(hi, _mm512_mul_ps(xs, scale_hi)));
                    _mm512_storeu_ps(acc[b], lo);
                    _mm512_storeu_ps(acc[b] + 16, hi);
                }
            }
            for (int b = 0; b < rows; b++)
                store_tile_row(y, (size_t)((row + b) * n + t * TILE), _mm512_add_ps(_mm512_loadu_ps(acc[b]), bias_lo),
                              _mm512_add_ps(_mm512_loadu_ps(acc[b] + 16), bias_hi), float_out);
        }
    }
    if (configured) _tile_release();
}

#else

int fast_tts_amx_available(void) { return 0; } /* AMX needs Linux's permission call */

int fast_tts_use_amx(int on) {
    (void)on;
    return 0;
}

int fast_tts_amx_enabled(int feature) {
    (void)feature;
    return 0;
}

#endif
