"""The shared training loop, driven by a toy task (a linear classifier on random points):
events, early stopping, divergence, and a stopped run that resumes to the very weights of
a run never stopped. Seconds, no transformers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from fnbundle.errors import TrainingStopped
from fnbundle.training.control import TrainControl
from fnbundle.training.events import Diverged
from fnbundle.training.loop import TrainLoop

pytestmark = pytest.mark.model  # imports torch

STEPS_PER_EPOCH = 6
BATCH = 8


class Toy:
    """Two Gaussian blobs; batches a function of (seed, epoch) alone, as the loop needs."""

    steps_per_epoch = STEPS_PER_EPOCH

    def __init__(self, poison_at: int | None = None):
        g = torch.Generator().manual_seed(0)
        n = STEPS_PER_EPOCH * BATCH
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 2, generator=g) + self.y[:, None] * 2.0
        self.vx = torch.randn(32, 2, generator=g) + (torch.arange(32) % 2)[:, None] * 2.0
        self.vy = torch.arange(32) % 2
        self.poison_at, self.seen = poison_at, 0

    def train(self, epoch: int, start: int):
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(epoch))
        for i in range(start, STEPS_PER_EPOCH):
            idx = order[i * BATCH : (i + 1) * BATCH]
            yield self.x[idx], self.y[idx]

    def loss(self, model: Any, batch: Any) -> torch.Tensor:
        self.seen += 1
        x, y = batch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        return loss * math.nan if self.seen == self.poison_at else loss

    def evaluate(self, model: Any) -> tuple[float, dict[str, float]]:
        with torch.no_grad():
            logits = model(self.vx)
        accuracy = float((logits.argmax(-1) == self.vy).float().mean())
        return float(torch.nn.functional.cross_entropy(logits, self.vy)), {
            "accuracy": accuracy,
            "macro_f1": accuracy,
        }


def fresh():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


START = {"labels": ["a", "b"], "train_examples": 48, "eval_examples": 32, "device": "cpu"}


def run(control: TrainControl, task: Toy, events: list, epochs: int = 3, patience: int = 0):
    loop = TrainLoop(events.append, control, epochs=epochs, patience=patience)
    data = Path(__file__)  # any file: the checkpoint fingerprint hashes it
    resume = loop.find_checkpoint('{"toy": 1}', data)
    model, optimizer, scheduler = fresh()
    result = loop.run(model, optimizer, scheduler, task, resume_from=resume, start=START)
    return result, model


def test_a_run_emits_typed_events_and_learns():
    events: list[dict] = []
    result, _ = run(TrainControl(), Toy(), events)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds.count("step") == 3 * STEPS_PER_EPOCH
    assert kinds.count("eval") == kinds.count("epoch") == 3
    assert result.epochs_run == 3 and result.steps == 3 * STEPS_PER_EPOCH
    assert [e for e in events if e["type"] == "eval"][-1]["accuracy"] >= 0.8


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    _, straight = run(TrainControl(), Toy(), [])

    steps = iter(range(1000))
    stop_at_8 = TrainControl(tmp_path, 4, lambda: "cancelled" if next(steps) == 8 else None)
    with pytest.raises(TrainingStopped) as stopped:
        run(stop_at_8, Toy(), [])
    assert stopped.value.step == 8

    events: list[dict] = []
    result, resumed = run(TrainControl(tmp_path, 4), Toy(), events)
    assert {"type": "log", "message": "resumed from step 8"} in events
    assert result.steps == 3 * STEPS_PER_EPOCH
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)


def test_a_nan_loss_is_diverged_naming_the_step():
    with pytest.raises(Diverged, match="at step 5"):
        run(TrainControl(), Toy(poison_at=5), [])


def test_early_stopping_keeps_the_best_weights():
    class Worsening(Toy):
        def evaluate(self, model):
            loss, scores = super().evaluate(model)
            self.evals = getattr(self, "evals", 0) + 1
            return loss + self.evals, scores  # validation loss rises after the first epoch

    events: list[dict] = []
    result, _ = run(TrainControl(), Worsening(), events, epochs=5, patience=2)
    assert result.epochs_run == 3
    assert any("early stop after epoch 3" in e.get("message", "") for e in events)
