"""The torch backend's scheduler on its own: admission, the prefill budget, row compaction and finishing, driven
with made-up step results (no model, no tensors)."""

from __future__ import annotations

import random

import pytest

from fast_tts.backends.scheduler import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    RowMove,
    Scheduler,
    Sequence,
    StepPlan,
    StepResult,
)


def run_step(s: Scheduler, stop: set[int] = frozenset(), fail: set[int] = frozenset()) -> tuple[StepPlan, list, list]:
    """Plan a step and report every planned sampling as done (stop tokens for ids in `stop`, errors for `fail`)."""
    plan = s.schedule()
    sampled = {rid: rid in stop for rid in plan.decode}
    for forward in plan.prefills:
        for chunk in forward:
            if chunk.completes:
                sampled[chunk.request_id] = chunk.request_id in stop
    failed = {rid: RuntimeError(str(rid)) for rid in fail}
    deliver, finished = s.update(plan, StepResult({k: v for k, v in sampled.items() if k not in failed}, failed))
    return plan, deliver, finished


def test_admission_is_first_come_and_bounded_by_rows() -> None:
    s = Scheduler(max_rows=2, max_seq=64, prefill_budget=100)
    for rid in range(4):
        s.add(Sequence(rid, prompt_len=5, max_new_tokens=3))
    plan = s.schedule()
    assert [c.request_id for f in plan.prefills for c in f] == [0, 1]
    assert [seq.request_id for seq in s.waiting] == [2, 3]


def test_short_prompts_share_one_forward_and_a_long_one_is_chunked() -> None:
    s = Scheduler(max_rows=4, max_seq=64, prefill_budget=16)
    s.add(Sequence(0, 3, 5))
    s.add(Sequence(1, 4, 5))
    s.add(Sequence(2, 30, 5))  # longer than the budget left: the rest of it
    plan = s.schedule()
    assert [[(c.request_id, c.start, c.end, c.completes) for c in f] for f in plan.prefills] == [
        [(0, 0, 3, True), (1, 0, 4, True)],
        [(2, 0, 9, False)],
    ]
    _, deliver, _ = run_step_with(s, plan)
    assert sorted(deliver) == [0, 1] and s.decoding == 2
    plan = s.schedule()  # the long prompt goes on; the two short ones decode
    assert plan.decode == (0, 1) and [(c.start, c.end) for f in plan.prefills for c in f] == [(9, 25)]


def run_step_with(s: Scheduler, plan: StepPlan) -> tuple[StepPlan, list, list]:
    sampled = {rid: False for rid in plan.decode}
    sampled.update({c.request_id: False for f in plan.prefills for c in f if c.completes})
    return (plan, *s.update(plan, StepResult(sampled)))


def test_a_padded_forward_never_runs_past_the_cache() -> None:
    s = Scheduler(max_rows=3, max_seq=10, prefill_budget=100)
    s.add(Sequence(0, 10, 1, prefilled=6))  # 4 left, but padded to the 8 of the next one it would end at 14
    s.add(Sequence(1, 8, 1))
    plan = s.schedule()
    assert [len(f) for f in plan.prefills] == [1, 1]
    s2 = Scheduler(max_rows=3, max_seq=14, prefill_budget=100)
    s2.add(Sequence(0, 10, 1, prefilled=6))
    s2.add(Sequence(1, 8, 1))
    assert [len(f) for f in s2.schedule().prefills] == [2]


def test_finishing_compacts_rows_and_plans_the_moves() -> None:
    s = Scheduler(max_rows=4, max_seq=64, prefill_budget=100)
    for rid in range(3):
        s.add(Sequence(rid, 4, 10))
    run_step(s)  # all three prefilled, first tokens sampled
    run_step(s)  # one decode step each
    s.add(Sequence(3, 50, 10))
    _, _, finished = run_step(s, stop={0})  # 0 stops while 3 is prefilled whole (and samples its first token)
    assert [f.request_id for f in finished] == [0]
    plan = s.schedule()
    # 3 completed its prefill in that step, so it was the last decoding row: it moves into 0's hole with its 50
    # written positions and its sampler state (1 token so far)
    assert plan.moves == (RowMove(3, 0, 50, 1),)
    assert [seq.request_id for seq in s.rows] == [3, 1, 2] and s.decoding == 3
    assert plan.decode == (3, 1, 2)


def test_length_and_cache_limits_finish_sequences() -> None:
    s = Scheduler(max_rows=2, max_seq=8, prefill_budget=100)
    s.add(Sequence(0, 3, 2))  # two tokens
    s.add(Sequence(1, 6, 99))  # cache of 8: the token at position 7 is its last
    reasons: dict[int, str] = {}
    delivered: dict[int, int] = {0: 0, 1: 0}
    for _ in range(10):
        _, deliver, finished = run_step(s)
        for rid in deliver:
            delivered[rid] += 1
        reasons.update({f.request_id: f.reason for f in finished})
    assert reasons == {0: FINISH_LENGTH, 1: FINISH_LENGTH}
    assert delivered == {0: 2, 1: 3}  # tokens for positions 6, 7 and 8: the third is never written to the cache
    assert not s.has_work


def test_stop_tokens_are_not_delivered_and_errors_fail_alone() -> None:
    s = Scheduler(max_rows=3, max_seq=64, prefill_budget=100)
    for rid in range(3):
        s.add(Sequence(rid, 4, 10))
    _, deliver, finished = run_step(s, stop={1}, fail={2})
    assert deliver == [0]
    assert {(f.request_id, f.reason) for f in finished} == {(1, FINISH_STOP), (2, FINISH_ERROR)}
    assert [seq.request_id for seq in s.rows] == [0] and s.decoding == 1


def test_cancel_waiting_and_running() -> None:
    s = Scheduler(max_rows=1, max_seq=64, prefill_budget=100)
    s.add(Sequence(0, 4, 10))
    s.add(Sequence(1, 4, 10))
    run_step(s)
    assert s.cancel(1).reason == FINISH_CANCELLED and not s.waiting
    assert s.cancel(0).reason == FINISH_CANCELLED and not s.rows
    assert s.cancel(0) is None
    assert s.schedule().released == (0,)


def test_fail_all_drops_the_running_and_keeps_the_waiting() -> None:
    s = Scheduler(max_rows=1, max_seq=64, prefill_budget=100)
    s.add(Sequence(0, 4, 10))
    s.add(Sequence(1, 4, 10))
    run_step(s)
    gone = s.fail_all(RuntimeError("boom"))
    assert [g.request_id for g in gone] == [0] and [q.request_id for q in s.waiting] == [1]


@pytest.mark.parametrize("seed", range(20))
def test_random_traffic_keeps_rows_consistent(seed: int) -> None:
    """Replaying the planned moves on a model of the cache keeps every sequence's written positions in its row."""
    rng = random.Random(seed)
    s = Scheduler(max_rows=4, max_seq=40, prefill_budget=rng.choice([3, 8, 64]))
    cache: dict[int, list[tuple[int, int]]] = {row: [] for row in range(4)}  # row -> (request id, position) written
    next_id = 0
    for _ in range(120):
        if rng.random() < 0.4:
            s.add(Sequence(next_id, rng.randint(1, 20), rng.randint(1, 12)))
            next_id += 1
        if rng.random() < 0.05 and s.rows:
            s.cancel(rng.choice(s.rows).request_id)
        plan = s.schedule()
        for move in plan.moves:
            cache[move.dst] = list(cache[move.src][: move.length])
        for row, seq in enumerate(s.rows):  # after the moves, every row holds its own sequence's positions
            assert cache[row][: seq.written] == [(seq.request_id, p) for p in range(seq.written)]
        for forward in plan.prefills:
            for c in forward:
                del cache[c.row][c.start:]
                cache[c.row] += [(c.request_id, p) for p in range(c.start, c.end)]
        for row, rid in enumerate(plan.decode):
            seq = next(q for q in s.rows if q.request_id == rid)
            pos = seq.prompt_len + seq.generated - 1
            del cache[row][pos:]
            cache[row].append((rid, pos))
        stop = {rid for rid in plan.decode if rng.random() < 0.1}
        sampled = {rid: rid in stop for rid in plan.decode}
        sampled.update({c.request_id: False for f in plan.prefills for c in f if c.completes})
        s.update(plan, StepResult(sampled))
        assert all(q.prefilled == q.prompt_len for q in s.rows[: s.decoding])
        assert all(q.prefilled < q.prompt_len for q in s.rows[s.decoding :])
