"""The trainer's typed event vocabulary: each event parses to its model by ``type``, a
misfit is refused, and divergence is a type of its own."""

from __future__ import annotations

import pytest
from fnbundle.errors import TrainingFailed
from fnbundle.training.events import Diverged, Step, parse_event
from pydantic import ValidationError

pytestmark = pytest.mark.unit

STEP = {
    "type": "step",
    "step": 3,
    "total_steps": 10,
    "epoch": 1,
    "loss": 0.5,
    "learning_rate": 1e-4,
    "eta_s": 2.0,
}


def test_an_event_parses_to_its_type():
    event = parse_event(STEP)
    assert isinstance(event, Step) and event.step == 3
    assert event.model_dump(exclude_none=True) == STEP
    # A language model's step also says its throughput; other trainers leave it out.
    assert parse_event({**STEP, "tokens_per_s": 812.5}).tokens_per_s == 812.5  # type: ignore[union-attr]
    assert parse_event({"type": "log", "message": "hi"}).model_dump()["level"] == "info"


@pytest.mark.parametrize(
    "bad",
    [
        {**STEP, "type": "stepp"},  # an unknown type
        {**STEP, "los": 0.5},  # a misspelt field
        {k: v for k, v in STEP.items() if k != "loss"},  # a missing one
        {"type": "published"},
    ],
)
def test_a_misfit_is_refused(bad):
    with pytest.raises(ValidationError):
        parse_event(bad)


def test_divergence_is_a_training_failure_recognised_by_type():
    exc = Diverged("loss is nan at step 4; lower the learning rate.")
    assert isinstance(exc, TrainingFailed) and exc.reason == "diverged"
    assert exc.to_body()["error"]["type"] == "training_failed"
