"""Which sequences run in each step of the torch backend, and where their cache rows are: vLLM v1's scheduler, apart
from the model runner. Pure Python (no tensors, no model), so its rules are tested on their own.

Rules:
- sequences wait in arrival order and take a cache row when one of `max_rows` is free;
- rows are kept compacted: rows 0..D-1 hold decoding sequences (so decode reads the cache through views), rows D..
  hold sequences still being prefilled, in arrival order; when a sequence leaves, the last decoding row moves into
  its hole and the prefilling rows shift down (`RowMove`s, applied by the runner before the next step);
- each step prefills at most `prefill_budget` prompt positions of newcomers, in row order: a run of newcomers whose
  whole remaining prompts fit goes through one padded forward (a burst of short prompts reads the weights once); a
  longer prompt takes the rest of the budget, and later steps continue it;
- each step decodes rows 0..D-1 (the sequences decoding when the step was planned); a sequence whose prefill
  completes samples its first token in the prefill and decodes from the next step on;
- a sequence finishes when its stop token is sampled, after `max_new_tokens`, when its next position would be past
  the cache, on an error, or when cancelled.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fast_tts.backends.base import FINISH_CANCELLED, FINISH_ERROR, FINISH_LENGTH, FINISH_STOP


@dataclass(eq=False)
class Sequence:
    """One request as the scheduler sees it: lengths and progress."""

    request_id: int
    prompt_len: int
    max_new_tokens: int
    prefilled: int = 0  # prompt positions in the cache
    generated: int = 0  # tokens sampled (a stop token included)

    @property
    def written(self) -> int:
        """Cache positions holding this sequence's keys (the last sampled token is not written yet)."""
        return self.prefilled + max(self.generated - 1, 0)


@dataclass(frozen=True)
class RowMove:
    """Copy the first `length` cache positions of row `src` over row `dst`; `sampler_steps` is the sequence's
    generated count when it is decoding (its sampling state and last token move too), None while prefilling."""

    src: int
    dst: int
    length: int
    sampler_steps: int | None


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt positions start..end-1 of `request_id`, into cache `row`; `completes`: the prompt ends here, so the
    runner samples the sequence's first token."""

    request_id: int
    row: int
    start: int
    end: int
    completes: bool


@dataclass(frozen=True)
class StepPlan:
    """What the runner does in one step, in this order: row moves, sampler releases, prefills, one decode step."""

    moves: tuple[RowMove, ...] = ()
    released: tuple[int, ...] = ()  # rows whose sampling state is dropped (a finished sequence in the last row)
    prefills: tuple[tuple[PrefillChunk, ...], ...] = ()  # each tuple is one forward (consecutive rows)
    decode: tuple[int, ...] = ()  # request ids decoding, in rows 0..len-1
    decode_kv_len: int = 0  # cache positions the decode step reads

    @property
    def empty(self) -> bool:
        return not (self.moves or self.released or self.prefills or self.decode)


@dataclass(frozen=True)
class StepResult:
    """What the runner reports: ids that sampled a token (and whether it was a stop token), ids that failed."""

    sampled: dict[int, bool] = field(default_factory=dict)  # request id -> stop token sampled
    failed: dict[int, BaseException] = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    """A sequence that left the scheduler, and why."""

    request_id: int
    reason: str
    error: BaseException | None = None


class Scheduler:
    """Cache-row bookkeeping and step planning for up to `max_rows` running sequences."""

    def __init__(self, max_rows: int, max_seq: int, prefill_budget: int) -> None:
        if max_rows < 1 or max_seq < 2 or prefill_budget < 1:
            raise ValueError("max_rows >= 1, max_seq >= 2 and prefill_budget >= 1 are required")
        self.max_rows, self.max_seq, self.prefill_budget = max_rows, max_seq, prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.rows: list[Sequence] = []  # index = cache row
        self.decoding = 0  # rows 0..decoding-1 decode
        self._moves: list[RowMove] = []
        self._released: list[int] = []

    # ---- requests ---------------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a new sequence (admitted when a row is free)."""
        if seq.prompt_len < 1 or seq.prompt_len > self.max_seq:
            raise ValueError(f"prompt length {seq.prompt_len} is outside 1..{self.max_seq}")
        self.waiting.append(seq)

    def cancel(self, request_id: int) -> Finished | None:
        """Drop a waiting or running sequence; None when it is not here (finished already)."""
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return Finished(request_id, FINISH_CANCELLED)
        for row, seq in enumerate(self.rows):
            if seq.request_id == request_id:
                self._remove(row)
                return Finished(request_id, FINISH_CANCELLED)
        return None

    def fail_all(self, error: BaseException) -> list[Finished]:
        """Drop every running sequence (the runner's state is no longer trustworthy); waiting ones stay."""
        gone = [Finished(seq.request_id, FINISH_ERROR, error) for seq in self.rows]
        self.rows, self.decoding = [], 0
        self._moves, self._released = [], list(range(self.max_rows))
        return gone

    def drain(self) -> list[Sequence]:
        """Remove and return every sequence, running and waiting (at shutdown)."""
        left = [*self.rows, *self.waiting]
        self.rows, self.waiting, self.decoding = [], deque(), 0
        return left

    @property
    def has_work(self) -> bool:
        return bool(self.rows or self.waiting)

    # ---- planning ---------------------------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        """Admit waiting sequences into free rows and plan one step."""
        while self.waiting and len(self.rows) < self.max_rows:
            self.rows.append(self.waiting.popleft())
        decode = tuple(seq.request_id for seq in self.rows[: self.decoding])
        kv_len = max((seq.prompt_len + seq.generated for seq in self.rows[: self.decoding]), default=0)
        plan = StepPlan(tuple(self._moves), tuple(self._released), self._plan_prefills(), decode, kv_len)
        self._moves, self._released = [], []
        return plan

    def _plan_prefills(self) -> tuple[tuple[PrefillChunk, ...], ...]:
        budget, row = self.prefill_budget, self.decoding
        forwards: list[tuple[PrefillChunk, ...]] = []
        while budget > 0 and row < len(self.rows):
            group = self._short_prompts(row, budget)
            if len(group) > 1:
                forwards.append(tuple(PrefillChunk(s.request_id, row + i, s.prefilled, s.prompt_len, True)
                                      for i, s in enumerate(group)))
                budget -= sum(s.prompt_len - s.prefilled for s in group)
                row += len(group)
                continue
            seq = self.rows[row]
            end = min(seq.prompt_len, seq.prefilled + budget)
            forwards.append((PrefillChunk(seq.request_id, row, seq.prefilled, end, end == seq.prompt_len),))
            budget -= end - seq.prefilled
            if end < seq.prompt_len:
                break
            row += 1
        return tuple(forwards)

    def _short_prompts(self, first: int, budget: int) -> list[Sequence]:
        """The run of newcomers from row `first` whose remaining prompts all fit in `budget`, and whose padded
        forward (every row as wide as the widest remainder) stays inside the cache."""
        group: list[Sequence] = []
        width = 0
        for seq in self.rows[first:]:
            left = seq.prompt_len - seq.prefilled
            width = max(width, left)
            if left > budget or any(s.prefilled + width > self.max_seq for s in (*group, seq)):
                break
            group.append(seq)
            budget -= left
        return group

    # ---- results ----------------------------------------------------------------------------------------------
    def update(self, plan: StepPlan, result: StepResult) -> tuple[list[int], list[Finished]]:
        """Account a step's results. Returns the ids whose sampled token is to be delivered (not stop tokens, not
        failed) and the sequences that finished; their rows are freed (moves are planned for the next step)."""
        by_id = {seq.request_id: seq for seq in self.rows}
        finished: list[Finished] = []
        deliver: list[int] = []
        done: set[int] = set()
        for forward in plan.prefills:
            for chunk in forward:
                seq = by_id.get(chunk.request_id)
                if seq is not None and chunk.request_id not in result.failed:
                    seq.prefilled = chunk.end
        # newcomers that completed (or failed) join the decoding rows, in row order
        while self.decoding < len(self.rows):
            seq = self.rows[self.decoding]
            if seq.prefilled < seq.prompt_len and seq.request_id not in result.failed:
                break
            self.decoding += 1
        for request_id, error in result.failed.items():
            if request_id in by_id:
                finished.append(Finished(request_id, FINISH_ERROR, error))
                done.add(request_id)
        for request_id, stopped in result.sampled.items():
            seq = by_id.get(request_id)
            if seq is None or request_id in done:
                continue
            seq.generated += 1
            reason = None
            if stopped:
                reason = FINISH_STOP
            else:
                deliver.append(request_id)
                if seq.generated >= seq.max_new_tokens or seq.prompt_len + seq.generated - 1 >= self.max_seq:
                    reason = FINISH_LENGTH
            if reason is not None:
                finished.append(Finished(request_id, reason))
                done.add(request_id)
        for row in range(len(self.rows) - 1, -1, -1):
            if self.rows[row].request_id in done:
                self._remove(row)
        return deliver, finished

    def _remove(self, row: int) -> None:
        """Free `row`: the last decoding row moves into a decoding hole, prefilling rows shift down by one."""
        if row < self.decoding:
            last = self.decoding - 1
            if row != last:
                moved = self.rows[last]
                self._moves.append(RowMove(last, row, moved.written, moved.generated))
                self.rows[row] = moved
            else:
                self._released.append(row)
            self.decoding -= 1
            hole = last
        else:
            hole = row
        del self.rows[hole]
        for dst in range(hole, len(self.rows)):
            self._moves.append(RowMove(dst + 1, dst, self.rows[dst].prefilled, None))
