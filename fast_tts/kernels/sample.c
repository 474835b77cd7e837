/* One sampling step of a batch in which every row keeps only its top-k tokens: the sampler's sparse path of
 * fast_tts/sampling.py (`BatchSampler.sample` with `apply_top_p_top_k_sparse`) in one pass per row and codebook.
 *
 * A decode step's sampling is some fifty small torch operations over (rows, codebooks, vocab) logits; each costs
 * more than its arithmetic, and more again once the step has pushed everything out of the caches. Here each row and
 * codebook reads its logits once: divide by the temperature, apply the repetition penalty (alpha = penalty ^ count:
 * s * alpha below zero, s / alpha above), keep the k largest in a sorted list while taking the maximum, then a
 * logsumexp over the vocabulary. Among the k, top-p drops a token when the probability at and below it (one minus
 * the mass above it) is at most 1 - top_p, except the first min_keep; stop ids not yet allowed are dropped too. The
 * token is then the first kept one (greedy codebooks), argmax(probs / noise) for a row that replays another
 * implementation's draws, or the inverse CDF at the row's uniform over the kept tokens in vocabulary order, exactly
 * the torch path's rules. Sums are taken in another order than torch's, so a token can differ from the torch path's
 * only where two choices tie to float rounding. A row and codebook whose every token is dropped gets token 0, as
 * torch's argmax over all -inf does.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h> /* qsort */

#include "fast_tts_kernels.h"

typedef struct {
    float value;
    int64_t token;
} candidate;

/* Insert (value, token) into the descending list of n <= k candidates; equal values keep the earlier token first. */
static int keep_largest(candidate *top, int n, int64_t k, float value, int64_t token) {
    if (n == k && !(value > top[n - 1].value)) return n;
    int at = n < k ? n : n - 1;
    while (at > 0 && value > top[at - 1].value) {
        top[at] = top[at - 1];
        at--;
    }
    top[at].value = value;
    top[at].token = token;
    return n < k ? n + 1 : n;
}

static int by_token(const void *a, const void *b) {
    int64_t x = ((const candidate *)a)->token, y = ((const candidate *)b)->token;
    return (x > y) - (x < y);
}

static int64_t sample_one(const fast_tts_sample_args *a, int64_t r, int64_t c, float *scratch) {
    const int64_t vocab = a->vocab, at = r * a->books + c;
    const float *logits = a->logits + at * vocab;
    const float *counts = a->counts ? a->counts + at * vocab : NULL;
    const float t = a->temperature[at], penalty = a->penalty[r];
    const int64_t k = a->k_eff[r];
    candidate top[FAST_TTS_SAMPLE_MAX_K];
    int n = 0;
    float max = -INFINITY;
    for (int64_t v = 0; v < vocab; v++) {
        float x = logits[v] / t;
        if (counts && counts[v] != 0.0f) {
            float alpha = powf(penalty, counts[v]);
            x = x < 0.0f ? x * alpha : x / alpha;
        }
        scratch[v] = x;
        if (x > max) max = x;
        n = keep_largest(top, n, k, x, v);
    }
    double total = 0.0;
    for (int64_t v = 0; v < vocab; v++) total += expf(scratch[v] - max);
    const float lse = max + (float)log(total);

    /* top-p over the k largest (descending), then the stop ids not yet allowed */
    const float floor_p = 1.0f - a->top_p[r];
    candidate kept[FAST_TTS_SAMPLE_MAX_K];
    int m = 0;
    double cum = 0.0;
    for (int j = 0; j < n; j++) {
        float p = expf(top[j].value - lse);
        cum += p;
        float at_or_below = 1.0f - ((float)cum - p);
        if (at_or_below <= floor_p && j >= a->min_keep[r]) continue;
        if (a->blocked && a->blocked[r * vocab + top[j].token]) continue;
        kept[m++] = top[j];
    }
    if (m == 0) return 0;
    if (a->greedy[at]) return kept[0].token;

    /* softmax over the kept tokens (the others have probability 0); kept[0] holds the largest value */
    const float largest = kept[0].value;
    float sum = 0.0f;
    for (int j = 0; j < m; j++) sum += expf(kept[j].value - largest);
    if (a->use_noise[r]) {
        const float *noise = a->noise + at * vocab;
        int64_t best = 0;
        float best_score = -INFINITY;
        for (int j = 0; j < m; j++) {
            float score = expf(kept[j].value - largest) / sum / noise[kept[j].token];
            if (score > best_score || (score == best_score && kept[j].token < best)) {
                best_score = score;
                best = kept[j].token;
            }
        }
        return best;
    }
    qsort(kept, (size_t)m, sizeof kept[0], by_token);
    double cdf[FAST_TTS_SAMPLE_MAX_K];
    double running = 0.0;
    for (int j = 0; j < m; j++) {
        running += (double)(expf(kept[j].value - largest) / sum);
        cdf[j] = running;
    }
    const double target = a->uniforms[at] * running;
    for (int j = 0; j < m; j++)
        if (cdf[j] > target) return kept[j].token;
    return vocab - 1;
}

void fast_tts_sample_top_k(const fast_tts_sample_args *args) {
    for (int64_t r = 0; r < args->rows; r++)
        for (int64_t c = 0; c < args->books; c++)
            args->tokens[r * args->books + c] = sample_one(args, r, c, args->scratch);
}
