"""Fine-tune a transformers encoder into a text classifier, export it, publish it.

Key rules: deterministic for a given seed (seeded shuffles, deterministic kernels); the
reported metrics come from rows the model never trained or early-stopped on, overall and
per text length (``by_length``: 1-5, 6-20, 21+ words, ``null`` for a length with no rows,
see :mod:`fnbundle.training.metrics`); a NaN or infinite loss stops training as
``diverged``; nothing reaches the store until the whole artifact (weights, ONNX exports
with parity, metrics, curves, manifest) is complete.

The loop (steps, checkpoints, resume at the exact next batch, stop requests, early
stopping, divergence) is :class:`fnbundle.training.loop.TrainLoop`, shared by every torch
training task; this module brings the classifier's data, model, batches and evaluation.
With a :class:`TrainControl` the run survives being killed and, on CPU, ends with the same
weights and metrics as a run never interrupted; a checkpoint written for other params or
data (fingerprint: the params' JSON and the dataset's sha256) is refused with ``Conflict``.
A stop request saves a checkpoint and raises ``TrainingStopped``; nothing is published.

Training runs on CUDA when one is available (``device="auto"``), on CPU otherwise; the
artifact is always saved and exported from CPU. Training batches group texts of similar
length (sorted within windows of :data:`LENGTH_WINDOW` batches, then the batches are
shuffled), which cuts padding by about 1.6x on short reviews; bit-for-bit reproducibility
holds on CPU, not across GPUs.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from fnbundle.datasets import data_roots, resolve_data
from fnbundle.loading import resolve_model_dir
from fnbundle.runtime.tokenizer import encode, load_tokenizer
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.tasks.train_classifier.params import TrainClassifierParams
from fnbundle.training.control import TrainControl
from fnbundle.training.data import load_text_dataset, make_splits
from fnbundle.training.export import default_backend, export_with_parity
from fnbundle.training.loop import (
    LoopResult,
    TrainLoop,
    linear_warmup_schedule,
    pick_device,
    seed_everything,
)
from fnbundle.training.metrics import classification_metrics, plot_training_curves

log = logging.getLogger(__name__)

Event = dict[str, Any]
OnEvent = Callable[[Event], None]
TASK = "classify"
LENGTH_WINDOW = 8  # batches whose texts are sorted by length together before shuffling


class TrainResult(BaseModel):
    model_id: str
    name: str
    metrics: dict[str, Any]
    default_backend: str
    epochs_run: int
    stopped_early: bool
    train_seconds: float


def quiet_transformers() -> None:
    """Our own progress events replace transformers' bars and its expected notice that
    the new classification head is freshly initialised."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class _Trainer:
    """The classifier's half of a run: data, model, batches, evaluation and publishing;
    the loop itself (steps, checkpoints, resume, stop, early stopping) is
    :class:`~fnbundle.training.loop.TrainLoop`'s."""

    def __init__(
        self,
        params: TrainClassifierParams,
        settings: Settings,
        on_event: OnEvent,
        control: TrainControl,
    ):
        self.p, self.settings = params, settings
        self.loop = TrainLoop(on_event, control, epochs=params.epochs, patience=params.patience)

    def _batches(self, indices: list[int], shuffle: bool, epoch: int, start: int = 0):
        """Batches from the ``start``-th on; the order is a function of (seed, epoch)
        alone, so a resumed epoch skips exactly the batches it already trained on."""
        import torch

        ds, size = self.ds, self.p.batch_size
        order = list(indices)
        chunks: list[list[int]] = []
        if shuffle:
            rng = random.Random(self.p.seed * 1000 + epoch)
            rng.shuffle(order)
            window = size * LENGTH_WINDOW  # a multiple of size: only the last batch is short
            for w in range(0, len(order), window):
                part = sorted(order[w : w + window], key=lambda j: len(ds.texts[j]))
                chunks += [part[i : i + size] for i in range(0, len(part), size)]
            rng.shuffle(chunks)
        else:
            chunks = [order[i : i + size] for i in range(0, len(order), size)]
        for chunk in chunks[start:]:
            enc = self.tokenizer(
                [ds.texts[j] for j in chunk],
                padding=True,
                truncation=True,
                max_length=self.p.max_length,
                return_tensors="pt",
            )
            enc["labels"] = torch.tensor([self.label_ids[ds.labels[j]] for j in chunk])
            yield enc.to(self.device)

    # --- what the loop asks of a task (fnbundle.training.loop.Batches) -------------------
    def train(self, epoch: int, start: int):
        return self._batches(self.splits.train, True, epoch, start)

    def loss(self, model: Any, batch: Any) -> Any:
        import torch

        labels = batch.pop("labels")
        return torch.nn.functional.cross_entropy(
            model(**batch).logits, labels, label_smoothing=self.p.label_smoothing
        )

    def evaluate(self, model: Any) -> tuple[float, dict[str, float]]:
        loss, preds = self._evaluate(model, self.splits.validation)
        truth = [self.label_ids[self.ds.labels[i]] for i in self.splits.validation]
        scores = classification_metrics(truth, preds, self.labels)
        return loss, {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}

    def _evaluate(self, model: Any, indices: list[int]) -> tuple[float, list[int]]:
        import torch

        model.eval()
        # Batches of similar lengths pad far less (reviews run from 2 words to 100); the
        # predictions go back to the order of ``indices``.
        by_length = sorted(indices, key=lambda j: len(self.ds.texts[j]))
        losses, sorted_preds = [], []
        with torch.inference_mode():
            for batch in self._batches(by_length, False, 0):
                out = model(**batch)
                losses.append(float(out.loss) * len(batch["labels"]))
                sorted_preds += out.logits.argmax(-1).tolist()
        model.train()
        pred_of = dict(zip(by_length, sorted_preds, strict=True))
        return sum(losses) / len(indices), [pred_of[j] for j in indices]

    def run(self) -> TrainResult:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p, loop = self.p, self.loop
        data_path = resolve_data(p.data, self.settings)  # a dataset id, or a path in the roots
        ds = self.ds = load_text_dataset(
            data_path,
            data_roots(self.settings),
            text_column=p.text_column,
            label_column=p.label_column,
        )
        resume_from = None
        if loop.control.checkpoint_dir is not None:
            resume_from = loop.find_checkpoint(p.model_dump_json(), data_path)
        splits = self.splits = make_splits(ds, p.eval_split, p.seed)
        labels = self.labels = ds.label_names
        label_ids = self.label_ids = {label: i for i, label in enumerate(labels)}
        base_dir = resolve_model_dir(p.base, self.settings, field="base")
        seed_everything(p.seed)
        quiet_transformers()
        torch.set_num_threads(self.settings.thread_count)
        self.device = pick_device(p.device)
        self.tokenizer = AutoTokenizer.from_pretrained(
            base_dir, use_fast=True, trust_remote_code=False
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id=label_ids,
            use_safetensors=True,
            trust_remote_code=False,
        )
        if p.freeze_embeddings:
            # Rare words seen a few times in a small dataset would drag their vectors
            # around; fixing them also halves the weights the optimizer updates per step.
            model.get_input_embeddings().weight.requires_grad_(False)
        model.to(self.device)
        model.train()
        self.steps_per_epoch = math.ceil(len(splits.train) / p.batch_size)
        total = self.steps_per_epoch * p.epochs
        trainable = [w for w in model.parameters() if w.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=p.learning_rate, weight_decay=p.weight_decay)
        scheduler = linear_warmup_schedule(optimizer, int(total * p.warmup_ratio), total)
        run = loop.run(
            model,
            optimizer,
            scheduler,
            self,
            resume_from=resume_from,
            start={
                "labels": labels,
                "train_examples": len(splits.train),
                "eval_examples": len(splits.validation),
                "device": str(self.device),
            },
        )
        test_loss, preds = self._evaluate(model, splits.test)
        metrics = classification_metrics(
            [label_ids[ds.labels[i]] for i in splits.test],
            preds,
            labels,
            texts=[ds.texts[i] for i in splits.test],  # for the per-length figures
        )
        metrics["eval_loss"] = round(test_loss, 5)
        model.to("cpu")  # saved, exported and parity-checked on CPU, where it will serve
        return self._publish(model, splits.test, metrics, run)

    def _publish(
        self, model: Any, test: list[int], metrics: dict[str, Any], run: LoopResult
    ) -> TrainResult:
        p = self.p
        store = Store(self.settings.store_root)
        with store.staging(p.name) as staged:
            model.save_pretrained(staged, safe_serialization=True)
            self.tokenizer.save_pretrained(staged)
            tok_meta = {
                "max_length": p.max_length,
                "pad_token": self.tokenizer.pad_token,
                "pad_token_id": self.tokenizer.pad_token_id,
            }
            exports: dict[str, Any] = {}
            if p.export_onnx:
                self.loop.event(
                    {"type": "log", "message": "exporting ONNX (fp32, int8) and checking parity"}
                )
                serving_tok = load_tokenizer(staged / "tokenizer.json", tok_meta, p.max_length)
                exports = export_with_parity(
                    model,
                    lambda texts: encode(serving_tok, texts),
                    [self.ds.texts[i] for i in test],
                    staged,
                )
            (staged / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            plot_training_curves(
                self.loop.history, staged / "training_curves.png", f"{p.name} ({p.base})"
            )
            backends = ["torch", *[b for b in ("onnx-fp32", "onnx-int8") if b in exports]]
            chosen = default_backend(exports)
            train_seconds = self.loop.seconds()
            manifest: dict[str, Any] = {
                "name": p.name,
                "task": TASK,
                "base_model": p.base,
                "labels": self.labels,
                "metrics": {
                    k: metrics[k]
                    for k in ("accuracy", "macro_f1", "eval_loss", "eval_examples", "by_length")
                },
                "training": {
                    **p.model_dump(),
                    "epochs_run": run.epochs_run,
                    "steps": run.steps,
                    "train_seconds": train_seconds,
                },
                "tokenizer": tok_meta,
                "export": exports,
                "backends": backends,
                "default_backend": chosen,
            }
            artifact = store.publish(staged, manifest)
        self.loop.event({"type": "published", "model_id": artifact.id})
        return TrainResult(
            model_id=artifact.id,
            name=p.name,
            metrics=metrics,
            default_backend=chosen,
            epochs_run=run.epochs_run,
            stopped_early=run.epochs_run < p.epochs,
            train_seconds=train_seconds,
        )


def train_classifier(
    params: TrainClassifierParams,
    settings: Settings,
    on_event: OnEvent | None = None,
    control: TrainControl | None = None,
) -> TrainResult:
    """Train, evaluate, export and publish; return the new model id and its metrics.

    With ``control``: checkpoints into (and resumes from) ``control.checkpoint_dir`` and
    stops with :class:`TrainingStopped` when ``control.should_stop`` gives a reason.
    """
    trainer = _Trainer(
        params, settings, on_event or (lambda _event: None), control or TrainControl()
    )
    return trainer.run()
