"""CandidateBatcher: local ICE candidates batched into few m.call.candidates events (spec batching rules)."""

from __future__ import annotations

import pytest

from visio_matrix.signaling import Candidate, CandidateBatcher, EndOfCandidates, build_candidates

A = Candidate("candidate:1 1 udp 1 192.0.2.1 1000 typ host", "0", 0)
B = Candidate("candidate:2 1 udp 1 192.0.2.2 1000 typ srflx raddr 0.0.0.0 rport 0", "0", 0)


def test_collects_for_delay_then_emits_one_batch() -> None:
    batcher = CandidateBatcher(delay_ms=500)
    assert batcher.add(A, 1000) is None
    assert batcher.due_ms == 1500
    assert batcher.add(B, 1400) is None
    assert batcher.poll(1499) is None
    assert batcher.poll(1500) == (A, B)
    assert batcher.due_ms is None and batcher.poll(5000) is None


def test_end_of_candidates_flushes_at_once() -> None:
    batcher = CandidateBatcher(delay_ms=2000)
    batcher.add(A, 0)
    batch = batcher.add(EndOfCandidates(), 10)
    assert batch == (A, EndOfCandidates())
    assert build_candidates("c", "p", batch)["candidates"][-1] == {"candidate": ""}
    assert batcher.finished
    with pytest.raises(ValueError, match="after end-of-candidates"):
        batcher.add(B, 20)


def test_full_batch_is_emitted_early() -> None:
    batcher = CandidateBatcher(delay_ms=10_000, max_batch=2)
    assert batcher.add(A, 0) is None
    assert batcher.add(B, 1) == (A, B)


def test_add_after_due_returns_the_batch() -> None:
    batcher = CandidateBatcher(delay_ms=100)
    batcher.add(A, 0)
    assert batcher.add(B, 150) == (A, B)


def test_flush() -> None:
    batcher = CandidateBatcher()
    assert batcher.flush() is None
    batcher.add(A, 0)
    assert batcher.flush() == (A,)


@pytest.mark.parametrize(("delay", "size"), [(-1, 10), (0, 0)])
def test_bad_settings(delay: int, size: int) -> None:
    with pytest.raises(ValueError, match="delay_ms must be"):
        CandidateBatcher(delay_ms=delay, max_batch=size)
