/* AVX-512 F helpers shared by the decode-step operations (decode_ops.c, decode_f32.c); include after the file's
 * target pragma. */
#ifndef FAST_TTS_SIMD_H
#define FAST_TTS_SIMD_H

#include <immintrin.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

#define LANES 16
#define MAX_CHUNKS (FAST_TTS_MAX_HEAD_DIM / LANES) /* the caller checks the head size */

static inline __mmask16 tail_mask(int64_t remaining) {
    return remaining >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << remaining) - 1u);
}

/* e^x: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, then a scale by 2^n (denormals and
 * overflow handled by vscalefps); NaN stays NaN. */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.f), _mm512_min_ps(_mm512_set1_ps(89.f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(y, n);
}

#endif
