"""How a training job steers the trainer: where its checkpoints live and when it must stop.

Key rule: ``should_stop`` is polled before every optimizer step (and once more before the
final evaluation and publishing), so it must be cheap: read a flag or compare a clock,
never block. A reason it returns ends training within one step: the trainer saves a
checkpoint (when it has a folder) and raises :class:`~fnbundle.errors.TrainingStopped`.
This module imports nothing heavy, so job code builds a control without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# What ``should_stop`` returns, each the job status the stop ends in; any other non-empty
# string also stops, carried as is (a job then ends ``cancelled``).
STOP_REASONS = ("cancelled", "stopped_budget", "timed_out")


def never_stop() -> str | None:
    return None


@dataclass
class TrainControl:
    """Checkpoints and stop requests for one training run.

    With a ``checkpoint_dir`` that already holds a complete checkpoint of the same params
    and data, training resumes from it; one written for other params or data is refused.
    One trainer at a time per folder: it removes what it does not recognise there.
    """

    checkpoint_dir: Path | None = None  # None: no checkpoints, no resume
    checkpoint_every: int = 50  # steps between checkpoints; every epoch end has one too
    should_stop: Callable[[], str | None] = field(default=never_stop)
    keep: int = 2  # complete checkpoints kept; older ones go once a newer one is complete

    def __post_init__(self) -> None:
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1 step")
        if self.keep < 1:
            raise ValueError("keep must be at least 1 checkpoint")
