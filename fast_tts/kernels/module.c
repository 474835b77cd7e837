/* The library's entry points besides the kernels: what the CPU can run, and an (empty) Python module init, so that
 * the library builds as a setuptools extension and the package finds its file by importing it
 * (fast_tts/kernels/__init__.py then opens it with cffi). */
#include <Python.h>

#include "fast_tts_kernels.h"

int fast_tts_cpu_features(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    int features = 0;
    if (__builtin_cpu_supports("avx512f")) features |= FAST_TTS_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16"))
        features |= FAST_TTS_CPU_AVX512BF16;
    if ((features & FAST_TTS_CPU_AVX512BF16) && __builtin_cpu_supports("avx512vnni"))
        features |= FAST_TTS_CPU_AVX512VNNI;
    if (features & FAST_TTS_CPU_AVX512BF16) features |= fast_tts_amx_available();
    return features;
#else
    return 0;
#endif
}

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = "fast-tts native CPU kernels (called through cffi, see __init__.py)",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
