"""LoRA fine-tuning of a causal LM: chats or prompt / completion pairs in, a PEFT adapter
published for ``generate`` out (and, asked for, the merged model as a base).

Key rules: the loss is on the answers alone (:mod:`fnbundle.training.lora_data`: labels
``-100`` on prompts, headers and padding), averaged over the supervised tokens of a whole
optimizer step, so ``gradient_accumulation`` micro-batches give the gradient of one big
batch. The base stays frozen (fp32 on CPU; bf16 / fp16, or 4-bit NF4 with ``quantize``, on
a GPU) and the adapters train in fp32. Only the adapters' weights are the loop's model
(``lora_model.adapter_weights``): checkpoints, best-epoch copies and the finiteness check
cost the adapters' size, not the base's, and a resumed run restores them, the optimizer,
the scheduler and every RNG (LoRA dropout included), so on CPU a killed run ends with the
same adapter bytes as an uninterrupted one. Nothing reaches the store until the whole artifact is
complete: the base first (imported as a ``generate`` base when it is not one already, so the
adapter's ``base.id`` always names a store artifact), then the adapter
(:mod:`fnbundle.training.lora_publish`).

The loop (steps, checkpoints, resume, stop, early stopping on the held-out loss, NaN) is
:class:`fnbundle.training.loop.TrainLoop`; this module brings the data, the micro-batches
and the evaluation (held-out loss and perplexity); the model (the base loaded frozen, the
adapters on it) is :mod:`fnbundle.training.lora_model`. fp16 trains with a fixed
loss scale (:data:`FP16_LOSS_SCALE`), undone on the adapters' gradients before clipping.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from fnbundle.datasets import data_roots, resolve_data
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.tasks.finetune_lora.estimate import precision_of
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams, check_hardware
from fnbundle.tasks.generate.base_import import import_base
from fnbundle.training.control import TrainControl
from fnbundle.training.loop import LoopResult, TrainLoop, pick_device, seed_everything
from fnbundle.training.lora_data import (
    IGNORE,
    Encoded,
    encode_all,
    load_examples,
    split_indices,
)
from fnbundle.training.lora_model import (
    adapter_weights,
    add_lora,
    base_dir,
    compute_dtype,
    load_base,
)
from fnbundle.training.lora_publish import publish_adapter, publish_merged

log = logging.getLogger(__name__)

Event = dict[str, Any]
OnEvent = Callable[[Event], None]
LENGTH_WINDOW = 8  # micro-batches whose examples are sorted by length together
FP16_LOSS_SCALE = 1024.0  # fp16 gradients of small losses underflow without a scale


class LoraResult(BaseModel):
    model_id: str  # the adapter's version id
    name: str
    base_id: str
    merged_id: str | None
    metrics: dict[str, Any]
    epochs_run: int
    stopped_early: bool
    train_seconds: float


class _Trainer:
    """The LoRA half of a run: data, model, micro-batches, evaluation and publishing."""

    def __init__(
        self,
        params: FinetuneLoraParams,
        settings: Settings,
        on_event: OnEvent,
        control: TrainControl,
    ):
        self.p, self.settings = params, settings
        self.loop = TrainLoop(on_event, control, epochs=params.epochs, patience=params.patience)
        self._step_started = time.perf_counter()
        self._step_tokens = 0

    # --- batches ------------------------------------------------------------------------
    def _micro_batches(self, indices: list[int], shuffle: bool, epoch: int) -> list[list[int]]:
        """Micro-batches of ``indices``; with ``shuffle`` the order is a function of (seed,
        epoch) alone, examples of similar length together (less padding)."""
        size, data = self.p.batch_size, self.data
        order = list(indices)
        if not shuffle:
            return [order[i : i + size] for i in range(0, len(order), size)]
        rng = random.Random(self.p.seed * 1000 + epoch)
        rng.shuffle(order)
        chunks: list[list[int]] = []
        window = size * LENGTH_WINDOW
        for w in range(0, len(order), window):
            part = sorted(order[w : w + window], key=lambda j: len(data[j].input_ids))
            chunks += [part[i : i + size] for i in range(0, len(part), size)]
        rng.shuffle(chunks)
        return chunks

    def _collate(self, chunk: list[int]) -> dict[str, Any]:
        import torch

        rows: list[Encoded] = [self.data[j] for j in chunk]
        width = max(len(r.input_ids) for r in rows)
        pad = self.pad_id
        ids = [r.input_ids + [pad] * (width - len(r.input_ids)) for r in rows]
        labels = [r.labels + [IGNORE] * (width - len(r.labels)) for r in rows]
        mask = [[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows]
        return {
            "input_ids": torch.tensor(ids, device=self.device),
            "attention_mask": torch.tensor(mask, device=self.device),
            "labels": torch.tensor(labels, device=self.device),
        }

    def _token_loss_sum(self, batch: dict[str, Any]) -> Any:
        """Summed cross entropy over the supervised (shifted) tokens of one micro-batch."""
        import torch

        with self._autocast():
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        shifted = logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(
            shifted.reshape(-1, shifted.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.device.type != "cuda" or self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.compute_dtype)

    # --- what the loop asks of a task (fnbundle.training.loop.Batches) -------------------
    def train(self, epoch: int, start: int) -> Iterator[list[list[int]]]:
        chunks = self._micro_batches(self.train_idx, True, epoch)
        accum = self.p.gradient_accumulation
        steps = [chunks[i : i + accum] for i in range(0, len(chunks), accum)]
        yield from steps[start:]

    def loss(self, model: Any, step: list[list[int]]) -> Any:
        """The step's mean token loss; every micro-batch but the last is backpropagated
        here, the last by the loop (its value carries the others' as a constant)."""
        import torch

        self._step_started = time.perf_counter()
        batches = [self._collate(chunk) for chunk in step]
        supervised = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        self._step_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        scale = self.loss_scale
        done = torch.zeros((), device=self.device)
        for batch in batches[:-1]:
            part = self._token_loss_sum(batch) / supervised
            (part * scale).backward()
            done = done + part.detach()
        last = self._token_loss_sum(batches[-1]) / supervised
        if scale == 1.0:
            return last + done
        return last * scale - last.detach() * (scale - 1.0) + done

    def step_figures(self) -> dict[str, Any]:
        seconds = max(time.perf_counter() - self._step_started, 1e-9)
        return {"tokens_per_s": round(self._step_tokens / seconds, 1)}

    def evaluate(self, model: Any) -> tuple[float, dict[str, float]]:
        loss = self._eval_loss(self.eval_idx)
        return loss, {"perplexity": round(math.exp(min(loss, 50.0)), 4)}

    def _eval_loss(self, indices: list[int]) -> float:
        import torch

        self.model.eval()
        total, tokens = 0.0, 0
        with torch.inference_mode():
            for chunk in self._micro_batches(indices, False, 0):
                batch = self._collate(chunk)
                total += float(self._token_loss_sum(batch))
                tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
        self.model.train()
        return total / max(tokens, 1)

    # --- the run ------------------------------------------------------------------------
    def run(self) -> LoraResult:
        # PEFT imports bitsandbytes when it is installed; on a CPU its optional kernels log
        # a warning about a package only 4-bit CPU inference would use.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        # PEFT asks transformers 5 a deprecated question (is_gradient_checkpointing): noise.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        import torch
        from transformers import AutoTokenizer, get_linear_schedule_with_warmup

        from fnbundle.training.text_classifier import quiet_transformers

        p, loop = self.p, self.loop
        data_path = resolve_data(p.data, self.settings)  # a dataset id, or a path in the roots
        _, examples = load_examples(data_path, data_roots(self.settings))
        resume_from = None
        if loop.control.checkpoint_dir is not None:
            resume_from = loop.find_checkpoint(p.model_dump_json(), data_path)
        check_hardware(p, cuda_here=torch.cuda.is_available())
        folder = self.base_dir = base_dir(p, self.settings)
        self.device = pick_device(p.device)
        precision = precision_of(p, self.device.type == "cuda")
        seed_everything(p.seed)
        quiet_transformers()
        torch.set_num_threads(self.settings.thread_count)
        tokenizer = self.tokenizer = AutoTokenizer.from_pretrained(
            folder, use_fast=True, trust_remote_code=False
        )
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.pad_id = int(pad or 0)
        self.data, dropped = encode_all(tokenizer, examples, p.max_seq_length)
        if dropped:
            loop.event(
                {
                    "type": "log",
                    "level": "warning",
                    "message": f"{len(dropped)} example(s) have no answer token within "
                    f"max_seq_length {p.max_seq_length} and are skipped (lines "
                    f"{', '.join(map(str, dropped[:10]))}{', ...' if len(dropped) > 10 else ''})",
                }
            )
        self.train_idx, self.eval_idx = split_indices(len(self.data), p.eval_share, p.seed)
        self.compute_dtype = compute_dtype(precision)
        frozen = load_base(folder, precision, self.compute_dtype, self.device)
        model, targets = add_lora(frozen, p)
        self.model = model
        weights = adapter_weights(model)
        self.loss_scale = FP16_LOSS_SCALE if self.compute_dtype == torch.float16 else 1.0
        if self.loss_scale != 1.0:
            for w in weights.parameters():  # undo the scale before clipping and the step
                w.register_hook(lambda g, s=self.loss_scale: g / s)
        micro = math.ceil(len(self.train_idx) / p.batch_size)
        self.steps_per_epoch = math.ceil(micro / p.gradient_accumulation)
        total = self.steps_per_epoch * p.epochs
        optimizer = torch.optim.AdamW(
            weights.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay
        )
        scheduler = get_linear_schedule_with_warmup(optimizer, int(total * p.warmup), total)
        run = loop.run(
            weights,
            optimizer,
            scheduler,
            self,
            resume_from=resume_from,
            start={
                "labels": [],
                "train_examples": len(self.train_idx),
                "eval_examples": len(self.eval_idx),
                "device": f"{self.device} ({precision})",
            },
        )
        eval_loss = self._eval_loss(self.eval_idx)  # the published (best) weights
        trainable = sum(w.numel() for w in weights.parameters())
        metrics: dict[str, Any] = {
            "eval_loss": round(eval_loss, 5),
            "perplexity": round(math.exp(min(eval_loss, 50.0)), 4),
            "train_examples": len(self.train_idx),
            "eval_examples": len(self.eval_idx),
            "skipped_examples": len(dropped),
            "trainable_parameters": trainable,
            "epochs_run": run.epochs_run,
            "steps": run.steps,
        }
        return self._publish(metrics, run, targets, precision)

    # --- publishing ---------------------------------------------------------------------
    def _publish(
        self, metrics: dict[str, Any], run: LoopResult, targets: list[str], precision: str
    ) -> LoraResult:
        p = self.p
        store = Store(self.settings.store_root)
        base = import_base(p.base, None, self.settings)  # the store base the adapter names
        train_seconds = self.loop.seconds()
        training = {
            **p.model_dump(),
            "precision": precision,
            "epochs_run": run.epochs_run,
            "steps": run.steps,
            "train_seconds": train_seconds,
        }
        adapter = publish_adapter(
            store, p, self.model, base, targets, metrics, training, self.loop.history
        )
        self.loop.event({"type": "published", "model_id": adapter.id})
        merged = None
        if p.merge:
            self.loop.event({"type": "log", "message": "merging the adapter into the base"})
            import torch

            full = self.compute_dtype == torch.float32
            merged = publish_merged(store, p.name, base, adapter, self.tokenizer, fp32=full)
            self.loop.event({"type": "published", "model_id": merged.id})
        return LoraResult(
            model_id=adapter.id,
            name=p.name,
            base_id=base.id,
            merged_id=merged.id if merged else None,
            metrics=metrics,
            epochs_run=run.epochs_run,
            stopped_early=run.epochs_run < p.epochs,
            train_seconds=train_seconds,
        )


def finetune_lora(
    params: FinetuneLoraParams,
    settings: Settings,
    on_event: OnEvent | None = None,
    control: TrainControl | None = None,
) -> LoraResult:
    """Fine-tune, evaluate and publish a LoRA adapter; return its id and metrics.

    With ``control``: checkpoints into (and resumes from) ``control.checkpoint_dir`` and
    stops with :class:`~fnbundle.errors.TrainingStopped` when ``control.should_stop`` says so.
    """
    trainer = _Trainer(
        params, settings, on_event or (lambda _event: None), control or TrainControl()
    )
    return trainer.run()


__all__ = ["LoraResult", "finetune_lora"]
