"""The training loop every torch training task shares: seeded, resumable, stoppable.

A task (the text classifier today; a tabular MLP or a LoRA fine-tune next) brings its model,
optimizer, scheduler and a :class:`Batches` object that knows how to cut an epoch into
batches, compute a batch's loss and evaluate on the validation rows. :class:`TrainLoop`
does the rest, the same way for every task: the epochs and steps, typed events
(:mod:`fnbundle.training.events`), a NaN or infinite loss raised as
:class:`~fnbundle.training.events.Diverged`, early stopping on the validation loss (the
best weights kept), checkpoints every ``control.checkpoint_every`` steps and after each
epoch's evaluation, resume at the exact next batch, and a stop request that saves a
checkpoint and raises :class:`~fnbundle.errors.TrainingStopped`.

Key rules: a batch order must be a function of (seed, epoch) alone, so a resumed epoch
skips exactly the batches it already trained on; a checkpoint written for other params or
data (its fingerprint) is refused with ``Conflict`` and left as it is; non-finite weights
are never saved.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fnbundle.errors import Conflict, InvalidRequest, TrainingStopped
from fnbundle.training.checkpoint import Checkpoint, CheckpointDir, fingerprint, folder_name
from fnbundle.training.control import TrainControl
from fnbundle.training.events import Diverged, parse_event

Event = dict[str, Any]
OnEvent = Callable[[Event], None]


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs seeded, deterministic kernels on."""
    # cuBLAS is deterministic only with a fixed workspace, set before its first handle.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def linear_warmup_schedule(optimizer: Any, warmup_steps: int, total_steps: int) -> Any:
    """The learning rate rises linearly to the optimizer's over ``warmup_steps``, then falls
    linearly to 0 at ``total_steps``: transformers' ``get_linear_schedule_with_warmup``,
    same formula and same ``LambdaLR`` state. Importing that module (transformers.optimization)
    imports its trainer utilities and through them PEFT and bitsandbytes: about 3 CPU
    seconds more at every training process start."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))

    return LambdaLR(optimizer, factor)


def pick_device(choice: str) -> Any:
    """The torch device to train on; asking for CUDA without one is a clear error."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest(
            "device 'cuda' asked for, but no CUDA GPU is available.", field="device"
        )
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


@dataclass
class Position:
    """Where training stands: what a checkpoint saves and a resume restores."""

    step: int = 0  # optimizer steps done
    epoch: int = 1  # the epoch in progress; finished when batch == steps per epoch
    batch: int = 0  # batches of ``epoch`` already trained
    best_loss: float = math.inf  # best validation loss so far
    bad_epochs: int = 0  # epochs since it last improved
    best_step: int | None = None  # the step whose weights early stopping keeps
    epoch_loss_sum: float = 0.0  # this epoch's step losses, for its mean train loss
    train_seconds: float = 0.0  # spent by earlier attempts of this run


class Batches(Protocol):
    """What a task gives the loop: its batches, a batch's loss and its evaluation."""

    steps_per_epoch: int

    def train(self, epoch: int, start: int) -> Iterable[Any]:
        """Epoch ``epoch``'s training batches from the ``start``-th on."""
        ...

    def loss(self, model: Any, batch: Any) -> Any:
        """The scalar loss tensor of one training batch."""
        ...

    def evaluate(self, model: Any) -> tuple[float, dict[str, float]]:
        """The validation loss and the figures the ``eval`` event reports."""
        ...


@dataclass
class LoopResult:
    epochs_run: int
    steps: int


class TrainLoop:
    """One run of the shared loop: ``find_checkpoint`` (before loading anything heavy),
    then ``run``; ``history`` holds the step and eval events (the training curves)."""

    def __init__(
        self,
        on_event: OnEvent,
        control: TrainControl,
        *,
        epochs: int,
        patience: int,
        max_grad_norm: float | None = 1.0,
    ):
        self.emit, self.control = on_event, control
        self.epochs, self.patience, self.max_grad_norm = epochs, patience, max_grad_norm
        self.history: list[Event] = []
        self.pos = Position()
        self.best_state: dict[str, Any] | None = None
        self.ckpts: CheckpointDir | None = None
        self.fingerprint = ""
        self.started = time.monotonic()

    def event(self, event: Event) -> None:
        parse_event(event)  # the typed vocabulary (training/events.py): a misfit is a bug
        if event["type"] in {"step", "eval"}:
            self.history.append(event)
        self.emit(event)

    def find_checkpoint(self, params_json: str, data_path: Path) -> Checkpoint | None:
        """The checkpoint to resume from (None without a folder or a checkpoint); one
        written for other params or data is refused."""
        if self.control.checkpoint_dir is None:
            return None
        self.ckpts = CheckpointDir(self.control.checkpoint_dir, self.control.keep)
        self.fingerprint = fingerprint(params_json, data_path)
        ckpt = self.ckpts.latest()
        if ckpt is not None and ckpt.state.get("fingerprint") != self.fingerprint:
            self.event(
                {
                    "type": "log",
                    "message": f"not resuming: checkpoint {ckpt.name} was written for other params or data",
                }
            )
            raise Conflict(
                f"The checkpoint folder holds {ckpt.name}, written for other params or data; "
                "resume with the same params and data, or use a new checkpoint folder."
            )
        return ckpt

    def _resume(self, ckpt: Checkpoint, model: Any, optimizer: Any, scheduler: Any) -> None:
        assert self.ckpts is not None
        self.best_state = self.ckpts.restore(ckpt, model, optimizer, scheduler)
        state = ckpt.state
        self.pos = Position(**{f.name: state[f.name] for f in fields(Position)})
        if state["best_loss"] is None:  # JSON has no infinity
            self.pos.best_loss = math.inf
        self.history = list(state["history"])
        self.event({"type": "log", "message": f"resumed from step {ckpt.step}"})

    def _checkpoint(self, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Save the current position, unless there is no folder or it is already saved."""
        import torch

        pos = self.pos
        if self.ckpts is None or self.ckpts.last_step == pos.step:
            return
        # A step with a finite loss can still leave non-finite weights; never save those.
        if not all(bool(torch.isfinite(w).all()) for w in model.parameters()):
            raise Diverged(
                f"diverged: weights are not finite at step {pos.step}; lower the learning rate."
            )
        state = {
            **asdict(pos),
            "best_loss": None if math.isinf(pos.best_loss) else pos.best_loss,
            "train_seconds": pos.train_seconds + time.monotonic() - self.started,
            "history": self.history,
            "fingerprint": self.fingerprint,
        }
        self.ckpts.save(state, model, optimizer, scheduler, pos.best_step)
        self.event({"type": "checkpoint", "step": pos.step, "epoch": pos.epoch})

    def check_stop(self, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Raise :class:`TrainingStopped` (after a checkpoint) if a stop was asked for."""
        reason = self.control.should_stop()
        if not reason:
            return
        self._checkpoint(model, optimizer, scheduler)
        step = self.pos.step
        saved = f"checkpoint {folder_name(step)} saved" if self.ckpts else "no checkpoint folder"
        last_eval = next((e for e in reversed(self.history) if e["type"] == "eval"), None)
        metrics = {k: v for k, v in last_eval.items() if k != "type"} if last_eval else {}
        raise TrainingStopped(
            f"Training stopped ({reason}) at step {step}; {saved}.",
            reason=reason,
            step=step,
            metrics=metrics,
        )

    def run(
        self,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        batches: Batches,
        *,
        resume_from: Checkpoint | None = None,
        start: dict[str, Any] | None = None,
    ) -> LoopResult:
        """Train ``model`` in place (ending with the best validation weights loaded); the
        ``start`` event carries ``start``'s task-specific fields."""
        import torch

        steps_per_epoch = batches.steps_per_epoch
        total = steps_per_epoch * self.epochs
        self.event({"type": "start", "total_steps": total, "epochs": self.epochs, **(start or {})})
        if resume_from is not None:
            self._resume(resume_from, model, optimizer, scheduler)
        pos = self.pos
        resumed_at, epochs_run = pos.step, pos.epoch
        # A task's own figures for each step event (a language model's tokens per second).
        step_figures: Callable[[], dict[str, Any]] = getattr(batches, "step_figures", dict)
        done = bool(self.patience and pos.bad_epochs >= self.patience)
        epoch, first_batch = (pos.epoch, pos.batch)
        if first_batch >= steps_per_epoch:  # saved at an epoch end: the next one is due
            epoch, first_batch = epoch + 1, 0
        while not done and epoch <= self.epochs:
            epochs_run = pos.epoch = epoch
            pos.batch = first_batch
            if first_batch == 0:
                pos.epoch_loss_sum = 0.0
            for batch in batches.train(epoch, first_batch):
                self.check_stop(model, optimizer, scheduler)
                loss = batches.loss(model, batch)
                if not torch.isfinite(loss):
                    raise Diverged(
                        f"diverged: loss is {float(loss.detach())} at step {pos.step + 1}; lower the learning rate."
                    )
                loss.backward()
                if self.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                pos.step += 1
                pos.batch += 1
                loss_value = float(loss.detach())
                pos.epoch_loss_sum += loss_value
                elapsed = time.monotonic() - self.started
                self.event(
                    {
                        "type": "step",
                        "step": pos.step,
                        "total_steps": total,
                        "epoch": epoch,
                        "loss": round(loss_value, 5),
                        "learning_rate": scheduler.get_last_lr()[0],
                        "eta_s": round(elapsed / (pos.step - resumed_at) * (total - pos.step), 1),
                        **step_figures(),
                    }
                )
                # The last batch of an epoch is saved after its evaluation, below.
                if pos.step % self.control.checkpoint_every == 0 and pos.batch < steps_per_epoch:
                    self._checkpoint(model, optimizer, scheduler)
            eval_loss, scores = batches.evaluate(model)
            self.event(
                {
                    "type": "eval",
                    "epoch": epoch,
                    "step": pos.step,
                    "eval_loss": round(eval_loss, 5),
                    **scores,
                }
            )
            self.event(
                {
                    "type": "epoch",
                    "epoch": epoch,
                    "step": pos.step,
                    "train_loss": round(pos.epoch_loss_sum / steps_per_epoch, 5),
                    "eval_loss": round(eval_loss, 5),
                }
            )
            if eval_loss < pos.best_loss - 1e-4:
                pos.best_loss, pos.bad_epochs, pos.best_step = eval_loss, 0, pos.step
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                pos.bad_epochs += 1
                if self.patience and pos.bad_epochs >= self.patience:
                    self.event(
                        {
                            "type": "log",
                            "message": f"early stop after epoch {epoch}: eval loss did not improve",
                        }
                    )
                    done = True
            self._checkpoint(model, optimizer, scheduler)
            epoch, first_batch = epoch + 1, 0
        self.check_stop(model, optimizer, scheduler)  # last chance before publishing
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return LoopResult(epochs_run=epochs_run, steps=pos.step)

    def seconds(self) -> float:
        """Training time so far, earlier attempts of a resumed run included."""
        return round(self.pos.train_seconds + time.monotonic() - self.started, 1)
