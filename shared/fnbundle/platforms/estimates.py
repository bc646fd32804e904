"""What a training job will cost before it starts, and a guard against overspending while it runs.

* A time estimate: the job's FLOPs divided by the device's throughput. Throughput starts as
  a documented guess per device and is replaced by what real runs measured, kept in
  ``<store>/.calibration.json`` as FLOP/s, so a run of one model calibrates every model.
* The price from :mod:`fnbundle.platforms.catalogue`; the ``local`` platform is priced at
  Modal's CPU rates so a budget behaves the same on a laptop as in the cloud. Memory comes
  from :mod:`fnbundle.platforms.sizing`.
* :class:`BudgetTracker`: announces 50, 75, 90 and 100 % of a budget once each, resumes included.

Key rules: nothing here imports torch, so an estimate takes milliseconds; a base that
cannot be checked now gives an estimate marked ``approximate`` (price per second only)
instead of holding the request. Estimates err high: every epoch runs, a RunPod pool is
timed with its slowest GPU, a local core is priced as a physical Modal core.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel

from fnbundle.datasets import data_roots, resolve_data
from fnbundle.errors import InvalidRequest
from fnbundle.platforms.catalogue import (
    CATALOGUE,
    CATALOGUE_AS_OF,
    GIB,
    Platform,
    check_platform,
    cpu_usd_per_s,
    get_gpu,
    recommend_gpu,
)
from fnbundle.platforms.sizing import (
    BaseNotChecked,
    MemoryEstimate,
    ModelShape,
    base_shape,
    estimate_memory,
)
from fnbundle.settings import Settings
from fnbundle.training.data import load_text_dataset, make_splits
from fnbundle.training.text_classifier import LENGTH_WINDOW, TrainClassifierParams

log = logging.getLogger(__name__)


def local_cores(settings: Settings) -> int:
    """The cores a local training run uses (the trainer's own rule)."""
    if settings.threads:
        return settings.threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- time ------------------------------------------------------------------------------
EFFICIENCY = 0.35  # share of the fp32 peak a small-batch fine-tune reaches on a GPU (guess)
# Effective fp32 GFLOP/s per core with AVX2 + FMA: the demo fine-tune (MiniLM on
# data/reviews.csv, length-grouped batches) reached 25 on a quiet 2-core AMD EPYC and 4 to 12
# while sharing it; the peak is ~100. A little below the quiet figure: budgets err high.
CPU_GFLOPS_PER_CORE = 20.0
EMA_WEIGHT = 0.3  # weight of the newest run in the measured throughput
CALIBRATION_FILE = ".calibration.json"
CHARS_PER_TOKEN = 4.0  # when the base has no tokenizer.json
TOKENIZED_SAMPLE = 2000  # texts tokenized exactly; a larger dataset uses their ratio
JOB_OVERHEAD_S = 45  # seconds: load the base, export ONNX with parity checks, publish
COLD_START_S = 30  # seconds: a serverless container starting (billed on Modal and RunPod)


def flops_per_token(shape: ModelShape, seq_len: float, *, train: bool) -> float:
    """Kaplan et al. 2020: a forward pass costs 2 FLOPs per dense weight plus
    ``2 * layers * seq_len * hidden`` for attention; backward twice the forward.
    The word-embedding lookup (vocab x hidden weights) does no multiplications."""
    dense = max(shape.n_params - shape.vocab * shape.hidden, 0)
    forward = 2 * dense + 2 * shape.layers * seq_len * shape.hidden
    return 3 * forward if train else forward


def default_flops_per_s(device: str, cpu_cores: int = 1) -> float:
    """The guess used until a run on ``device`` ("cpu" or a catalogue GPU) is measured."""
    if device == "cpu":
        return cpu_cores * CPU_GFLOPS_PER_CORE * 1e9
    for gpus in CATALOGUE.values():
        if device in gpus:
            return gpus[device].fp32_tflops * EFFICIENCY * 1e12
    raise InvalidRequest(f"Unknown device {device!r}.", field="gpu")


class Calibration:
    """Measured throughput per device, as effective FLOP/s, in a JSON file.

    The runtime calls ``record(estimate.gpu, tokens, seconds, estimate.flops_per_token)``
    after the training and evaluation passes (start-up and export not included). Writes are
    atomic (temp file + ``os.replace``); an unreadable file counts as empty.
    """

    def __init__(self, path: Path, *, cpu_cores: int = 1):
        self.path = path
        self.cpu_cores = cpu_cores

    @classmethod
    def for_settings(cls, settings: Settings) -> Calibration:
        return cls(settings.store_root / CALIBRATION_FILE, cpu_cores=local_cores(settings))

    def _load(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            devices = data["devices"]
            return {k: v for k, v in devices.items() if float(v["flops_per_s"]) > 0}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring unreadable calibration file %s: %s", self.path, exc)
            return {}

    def measured_runs(self, device: str) -> int:
        return int(self._load().get(device, {}).get("runs", 0))

    def flops_per_s(self, device: str) -> float:
        measured = self._load().get(device)
        if measured:
            return float(measured["flops_per_s"])
        return default_flops_per_s(device, self.cpu_cores)

    def throughput(self, device: str, flops_per_token: float) -> float:
        """Tokens per second on ``device`` for a model needing ``flops_per_token``."""
        return self.flops_per_s(device) / flops_per_token

    def record(self, device: str, tokens: int, seconds: float, flops_per_token: float) -> None:
        """Fold one run into the moving average; a run that did no work is ignored."""
        if tokens <= 0 or seconds <= 0 or flops_per_token <= 0:
            return
        devices = self._load()
        rate = tokens * flops_per_token / seconds
        old = devices.get(device)
        if old:
            rate = EMA_WEIGHT * rate + (1 - EMA_WEIGHT) * float(old["flops_per_s"])
        runs = int(old["runs"]) + 1 if old else 1
        devices[device] = {"flops_per_s": rate, "runs": runs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".calibration.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "devices": devices}, f, indent=2)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _padded_tokens(lengths: list[int], batch_size: int, seed: int | None) -> int:
    """Tokens the model processes when every batch is padded to its longest text, batched
    as the trainer does: with a seed (training), shuffled, then sorted by length within
    windows of ``LENGTH_WINDOW`` batches; without one (evaluation), in order."""
    order = list(lengths)
    if seed is not None:
        random.Random(seed).shuffle(order)
        window = batch_size * LENGTH_WINDOW
        order = [n for w in range(0, len(order), window) for n in sorted(order[w : w + window])]
    return sum(
        max(order[i : i + batch_size]) * len(order[i : i + batch_size])
        for i in range(0, len(order), batch_size)
    )


def _token_lengths(
    texts: list[str], tokenizer_file: Path | None, max_length: int
) -> tuple[list[int], str]:
    """Tokens per text ([CLS]/[SEP] included, truncated), and how they were counted."""
    if tokenizer_file is None:
        ratio, how = 1 / CHARS_PER_TOKEN, f"{CHARS_PER_TOKEN:g} characters per token"
    else:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.no_truncation()
        tok.no_padding()
        step = max(1, len(texts) // TOKENIZED_SAMPLE)
        sample = texts[::step]
        counts = [len(e.ids) for e in tok.encode_batch(sample)]
        if step == 1:
            return [min(n, max_length) for n in counts], "counted with the base's tokenizer"
        ratio = sum(counts) / max(1, sum(len(t) for t in sample))
        how = f"tokenizer ratio from {len(sample)} sampled texts"
    return [min(max_length, max(1, round(len(t) * ratio))) for t in texts], how


class Estimate(BaseModel):
    """What a job will need and cost. An ``approximate`` estimate (the base could not be
    checked yet) has only the price per second; the sizes and totals are None."""

    task: str
    platform: Platform
    gpu: str  # catalogue name, or "cpu"; also the calibration key
    usd_per_s: float
    memory: MemoryEstimate | None
    examples: int
    steps: int | None
    tokens: int | None  # processed, training and evaluation passes together
    flops_per_token: float | None  # mean over ``tokens``; what Calibration.record needs
    seconds: float | None
    usd: float | None
    assumptions: list[str]
    approximate: bool = False
    catalogue_as_of: str = CATALOGUE_AS_OF


def _approximate(
    task: str,
    platform: str,
    base: str,
    examples: int,
    settings: Settings,
    gpu: str | None,
    reason: str,
) -> Estimate:
    """The price per second alone, for a base that cannot be checked now. Without a named
    GPU a cloud job is priced at the platform's dearest one: estimates err high."""
    checked = f"{base} was not checked at submit ({reason}); the worker checks it when it starts"
    if platform == "local":
        cores = local_cores(settings)
        device, usd_per_s = "cpu", cpu_usd_per_s(cores)
        priced = f"priced as {cores} Modal CPU cores; memory not included (its size is unknown)"
    else:
        chosen = (
            get_gpu(platform, gpu)
            if gpu is not None
            else max(CATALOGUE[platform].values(), key=lambda g: g.usd_per_s)
        )
        device, usd_per_s = chosen.name, chosen.usd_per_s
        priced = f"priced at {chosen.label}" + (
            "" if gpu else ", the dearest GPU, until the base's size is known"
        )
    return Estimate(
        task=task,
        platform=cast(Platform, platform),
        gpu=device,
        usd_per_s=usd_per_s,
        memory=None,
        examples=examples,
        steps=None,
        tokens=None,
        flops_per_token=None,
        seconds=None,
        usd=None,
        assumptions=[checked, priced],
        approximate=True,
    )


def estimate_job(
    task: str,
    params: dict[str, Any],
    settings: Settings,
    *,
    platform: str = "local",
    gpu: str | None = None,
) -> Estimate:
    """Memory, time and USD of a job before it runs. "local" is priced as a Modal CPU
    container; "modal" and "runpod" use ``gpu`` or the cheapest GPU the job fits on."""
    if task != "train_classifier":
        raise InvalidRequest(
            f"No cost estimate for task {task!r}; known: train_classifier.", field="task"
        )
    check_platform(platform)
    p = TrainClassifierParams.model_validate(params)
    ds = load_text_dataset(
        resolve_data(p.data, settings),
        data_roots(settings),
        text_column=p.text_column,
        label_column=p.label_column,
    )
    splits = make_splits(ds, p.eval_split, p.seed)
    try:
        shape, tokenizer_file = base_shape(p.base, settings, p.freeze_embeddings)
    except BaseNotChecked as exc:
        return _approximate(task, platform, p.base, len(ds.texts), settings, gpu, str(exc))
    lengths, counted = _token_lengths(ds.texts, tokenizer_file, p.max_length)

    def tokens_of(rows: list[int], seed: int | None) -> int:
        return _padded_tokens([lengths[i] for i in rows], p.batch_size, seed)

    train_tokens = p.epochs * tokens_of(splits.train, p.seed)
    eval_tokens = p.epochs * tokens_of(splits.validation, None) + tokens_of(splits.test, None)
    mean_len = train_tokens / (p.epochs * len(splits.train))
    memory = estimate_memory(shape, p.batch_size, max(lengths))
    flops = train_tokens * flops_per_token(shape, mean_len, train=True)
    flops += eval_tokens * flops_per_token(shape, mean_len, train=False)

    assumptions = [
        f"all {p.epochs} epochs run (early stopping can only end sooner)",
        f"{mean_len:.0f} tokens per example after per-batch padding ({counted})",
        "training 6 FLOPs and evaluation 2 FLOPs per dense weight and token",
    ]
    overhead = JOB_OVERHEAD_S
    if platform == "local":
        device, cores = "cpu", local_cores(settings)
        memory_gib = math.ceil(memory.total / GIB)
        usd_per_s = cpu_usd_per_s(cores, memory_gib)
        assumptions.append(
            f"priced as {cores} Modal CPU cores and {memory_gib} GiB at Modal's rates"
        )
    else:
        chosen = recommend_gpu(platform, memory.total) if gpu is None else get_gpu(platform, gpu)
        if chosen.memory_gib * GIB < memory.total:
            raise InvalidRequest(
                f"{chosen.name} has {chosen.memory_gib:g} GiB; this job needs "
                f"{memory.total / GIB:.1f} GiB. Lower batch_size or max_length.",
                field="gpu",
            )
        device, usd_per_s, overhead = chosen.name, chosen.usd_per_s, overhead + COLD_START_S
        assumptions.append(f"{chosen.label} at the GPU price only")
    calibration = Calibration.for_settings(settings)
    runs = calibration.measured_runs(device)
    rate = calibration.flops_per_s(device)
    assumptions.append(
        f"{device} at {rate / 1e12:.3g} TFLOP/s "
        + (f"(measured over {runs} run(s))" if runs else "(default guess, not yet measured)")
    )
    assumptions.append(f"{overhead} s to start, load the base, export and publish")
    seconds = flops / rate + overhead
    tokens = train_tokens + eval_tokens
    return Estimate(
        task=task,
        platform=cast(Platform, platform),  # checked by check_platform
        gpu=device,
        usd_per_s=usd_per_s,
        memory=memory,
        examples=len(ds.texts),
        steps=p.epochs * math.ceil(len(splits.train) / p.batch_size),
        tokens=tokens,
        flops_per_token=flops / tokens,
        seconds=seconds,
        usd=round(seconds * usd_per_s, 6),
        assumptions=assumptions,
    )


# --- budget ----------------------------------------------------------------------------
BUDGET_THRESHOLDS = (0.5, 0.75, 0.9, 1.0)  # fractions of the budget announced once each


class BudgetTracker:
    """Cost of a running job against its budget.

    ``update(elapsed_s)`` takes the seconds this run has been going and returns one
    ``cost_usd`` event per threshold newly crossed. After a resume, pass what the earlier
    attempts spent as ``already_spent_usd``: thresholds it had crossed stay quiet.
    """

    def __init__(
        self, budget_usd: float | None, usd_per_s: float, *, already_spent_usd: float = 0.0
    ):
        if budget_usd is not None and budget_usd <= 0:
            raise InvalidRequest("budget_usd must be positive.", field="budget_usd")
        self.budget_usd = budget_usd
        self.usd_per_s = max(usd_per_s, 0.0)
        self._spent_before = max(already_spent_usd, 0.0)
        self._elapsed_s = 0.0
        self._announced = {t for t in BUDGET_THRESHOLDS if self._fraction() >= t}

    def _fraction(self) -> float:
        return self.cost_usd / self.budget_usd if self.budget_usd else 0.0

    @property
    def cost_usd(self) -> float:
        return self._spent_before + self._elapsed_s * self.usd_per_s

    @property
    def exhausted(self) -> bool:
        return self.budget_usd is not None and self.cost_usd >= self.budget_usd

    def update(self, elapsed_s: float) -> list[dict[str, Any]]:
        self._elapsed_s = max(self._elapsed_s, elapsed_s)  # a clock never runs back
        events = []
        for threshold in BUDGET_THRESHOLDS:
            if threshold not in self._announced and self._fraction() >= threshold:
                self._announced.add(threshold)
                events.append(
                    {
                        "type": "cost_usd",
                        "cost_usd": round(self.cost_usd, 6),
                        "budget_usd": self.budget_usd,
                        "fraction": threshold,
                    }
                )
        return events
