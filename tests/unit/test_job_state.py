"""The pure job state machine: every move checked against the transition table, the same
answer to a cancel whatever the state, and the fields a move resets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fnbundle.errors import Conflict
from fnbundle.jobs import state
from fnbundle.jobs.schema import RETRYABLE, TERMINAL, TRANSITIONS, JobStatus

pytestmark = pytest.mark.unit

JOB = "job-20260101000000-00000001"


def test_claim_only_from_queued():
    move = state.claim(JOB, JobStatus.queued, attempts=2, started_at=None)
    assert move.status == JobStatus.running and move.fields["attempts"] == 3
    assert move.events == [("state", {"status": "running", "attempt": 3})]
    started = datetime(2026, 1, 1, tzinfo=UTC)
    again = state.claim(JOB, JobStatus.queued, attempts=0, started_at=started)
    assert again.fields["started_at"] == started  # the first start is kept
    for status in set(JobStatus) - {JobStatus.queued}:
        with pytest.raises(Conflict):
            state.claim(JOB, status, attempts=1, started_at=None)


@pytest.mark.parametrize("status", list(JobStatus))
def test_cancel_answers_by_state(status):
    if status in TERMINAL - {JobStatus.cancelled}:
        with pytest.raises(Conflict, match="already ended"):
            state.cancel(JOB, status, cancel_requested=False)
        return
    move = state.cancel(JOB, status, cancel_requested=False)
    if status == JobStatus.cancelled:
        assert move is None
    elif status == JobStatus.queued:
        assert move is not None and move.status == JobStatus.cancelled
        assert move.events == [("state", {"status": "cancelled", "reason": "cancelled"})]
    else:  # running: flagged, still running, no state event
        assert move is not None and move.status is None and move.fields["cancel_requested"]
        assert [e[0] for e in move.events] == ["log"]
        assert state.cancel(JOB, status, cancel_requested=True) is None


@pytest.mark.parametrize("status", list(JobStatus))
def test_retry_only_from_a_retryable_state_and_with_the_same_resets(status):
    if status not in RETRYABLE:
        with pytest.raises(Conflict, match="only a failed or timed-out"):
            state.retry(JOB, status, attempts=3)
        return
    move = state.retry(JOB, status, attempts=3)
    assert move.fields == {
        **state.QUEUE_RESETS,
        "error": None,
        "run_s": 0.0,
        "retry_base": 3,
        "status": JobStatus.queued,
    }
    assert move.events == [("state", {"status": "queued", "reason": "retry"})]


def test_finish_and_requeue_follow_the_table():
    for to in TERMINAL:
        move = state.finish(JOB, JobStatus.running, to, reason="r", model_id="m")
        assert move.status == to and move.fields["model_id"] == "m"
        assert move.fields["finished_at"] is not None and move.fields["worker_pid"] is None
        assert move.events[-1] == ("state", {"status": to.value, "reason": "r"})
    for status in TERMINAL:
        with pytest.raises(Conflict):
            state.finish(JOB, status, JobStatus.succeeded)
    with pytest.raises(ValueError):
        state.finish(JOB, JobStatus.running, JobStatus.queued)
    move = state.requeue(JOB, JobStatus.running, "worker died", last_checkpoint_step=40)
    assert move.status == JobStatus.queued and move.fields["cancel_requested"] is False
    assert "resuming from step 40" in move.events[0][1]["message"]
    for status in set(JobStatus) - {JobStatus.running}:
        with pytest.raises(Conflict):
            state.requeue(JOB, status, "lost", None)


def test_every_target_has_its_sources_from_the_table():
    for to in JobStatus:
        assert state.sources(to) == {s for s, ts in TRANSITIONS.items() if to in ts}
