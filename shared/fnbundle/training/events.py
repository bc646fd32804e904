"""The trainer's event vocabulary, typed: one pydantic discriminated union on ``type``.

Every trainer emits these (as their JSON dicts, so a callback, a RunPod stream and the CLI
read plain data); the job attempt maps them to job events. Divergence is a type too:
:class:`Diverged`, raised by the trainer and recognised by the job attempt as the
``diverged`` reason, never by reading an error message.

Key rule: an event that does not fit its model is a bug in the trainer and fails loudly
(``extra="forbid"``), so the vocabulary cannot drift between trainer and readers. This
module imports nothing heavy.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fnbundle.errors import TrainingFailed


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Start(_Event):
    type: Literal["start"] = "start"
    total_steps: int
    epochs: int
    labels: list[str]
    train_examples: int
    eval_examples: int
    device: str


class Step(_Event):
    type: Literal["step"] = "step"
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    eta_s: float  # seconds left at this step's pace
    tokens_per_s: float | None = None  # a language model's tokens (padding excluded) per second


class Eval(_Event):
    """Validation figures after an epoch: a classifier's accuracy and macro-F1, a
    regressor's R² and RMSE (on the target's own scale)."""

    type: Literal["eval"] = "eval"
    epoch: int
    step: int
    eval_loss: float
    accuracy: float | None = None
    macro_f1: float | None = None
    r2: float | None = None
    rmse: float | None = None
    perplexity: float | None = None  # a language model's exp(eval_loss)


class Epoch(_Event):
    type: Literal["epoch"] = "epoch"
    epoch: int
    step: int
    train_loss: float
    eval_loss: float


class Checkpoint(_Event):
    type: Literal["checkpoint"] = "checkpoint"
    step: int
    epoch: int


class Log(_Event):
    type: Literal["log"] = "log"
    message: str
    level: Literal["info", "warning", "error"] = "info"


class ModelProgress(_Event):
    """One model of a run that trains several (a tabular ``compare``): it starts, ends
    with its held-out scores, or could not be fitted (``reason``)."""

    type: Literal["model"] = "model"
    model: str
    index: int  # 1-based position in the run
    of: int  # models in the run
    state: Literal["training", "done", "failed"]
    scores: dict[str, float] | None = None  # the main held-out figures, when done
    fit_s: float | None = None
    reason: str | None = None


class Published(_Event):
    type: Literal["published"] = "published"
    model_id: str


TrainerEvent = Annotated[
    Start | Step | Eval | Epoch | Checkpoint | Log | ModelProgress | Published,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[TrainerEvent] = TypeAdapter(TrainerEvent)


def parse_event(data: dict[str, Any]) -> TrainerEvent:
    """A trainer event from its JSON dict; a ValidationError if it is not one."""
    return _ADAPTER.validate_python(data)


class Diverged(TrainingFailed):
    """The loss or the weights stopped being finite: the job fails with reason ``diverged``."""

    reason = "diverged"
