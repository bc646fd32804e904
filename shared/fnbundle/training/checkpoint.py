"""Training checkpoints on disk: write them so a kill at any moment loses at most the
steps since the last one, find the newest complete one, restore it exactly.

Key rules: a checkpoint folder ``step-<8-digit step>/`` is complete or absent. It is
written into ``.tmp-<random>/`` (weights, optimizer, scheduler and RNG states, then
``state.json`` last), every file fsynced, and renamed into place by one ``os.replace``;
then the ``latest`` file names it (for readers: loading trusts the folders, so a kill
between the rename and ``latest`` loses nothing). Loading skips ``.tmp-*`` folders and
any folder whose ``state.json`` is missing, unreadable or lists a file that is not there.
Older checkpoints are deleted only once a newer one is complete. ``.pt`` files are read
with ``weights_only=True``: a checkpoint folder can never run code. ``state.json`` carries
a fingerprint of the params and the data; the trainer resumes only a matching one.

Layout of one checkpoint::

    model.safetensors   the weights at this step
    best.safetensors    the best epoch's weights so far (early stopping); a hard link when
                        unchanged since the previous checkpoint, so it costs no copy
    optimizer.pt        optimizer.state_dict()
    scheduler.pt        scheduler.state_dict()
    rng.pt              python random, numpy, torch CPU (and CUDA) generator states
    state.json          the trainer's state plus {"format", "files": {name: size}}
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fnbundle.store import fsync_path, sha256_file

FORMAT = 1  # bump when the layout changes; other formats are not loaded
STATE = "state.json"
LATEST = "latest"
MODEL = "model.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"
TMP_PREFIX = ".tmp-"
STEP_PREFIX = "step-"


def folder_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def fingerprint(params_json: str, data_path: Path) -> str:
    """What a checkpoint must match to be resumed: the params and the dataset's bytes."""
    digest = hashlib.sha256(params_json.encode())
    digest.update(b"\0" + sha256_file(data_path).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def name(self) -> str:
        return self.path.name


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


def _read(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder``, or None when it is incomplete or not one of ours."""
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        step = state["step"]
        files = state["files"]
        if state.get("format") != FORMAT or folder.name != folder_name(step):
            return None
        for name, size in files.items():
            if (folder / name).stat().st_size != size:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Checkpoint(folder, state)


def rng_states() -> dict[str, Any]:
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_states(states: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class CheckpointDir:
    """The checkpoints of one training run, in one folder that one trainer writes."""

    def __init__(self, root: Path, keep: int):
        self.root = Path(root)
        self.keep = keep
        self.last_step: int | None = None  # step of the checkpoint last saved or restored
        self._best: tuple[int, Path] | None = None  # (best_step, file) to link next time

    def complete(self) -> list[Checkpoint]:
        """Every complete checkpoint, newest first."""
        if not self.root.is_dir():
            return []
        found = [
            ckpt
            for folder in self.root.iterdir()
            if folder.name.startswith(STEP_PREFIX) and folder.is_dir()
            if (ckpt := _read(folder)) is not None
        ]
        return sorted(found, key=lambda c: c.step, reverse=True)

    def latest(self) -> Checkpoint | None:
        found = self.complete()
        return found[0] if found else None

    def save(
        self,
        state: dict[str, Any],
        model: Any,
        optimizer: Any,
        scheduler: Any,
        best_step: int | None,
    ) -> Checkpoint:
        """Write a complete checkpoint of ``state`` (which holds ``step``), point
        ``latest`` at it, then prune. ``best_step`` is the step whose weights early
        stopping keeps: this step's own weights, or those of an earlier checkpoint."""
        import torch
        from safetensors.torch import save_model

        step = int(state["step"])
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        tmp.mkdir()
        save_model(model, str(tmp / MODEL))
        if best_step is not None:
            if best_step == step:  # the best epoch just ended: its weights are these
                _link_or_copy(tmp / MODEL, tmp / BEST)
            elif self._best is not None and self._best[0] == best_step:
                _link_or_copy(self._best[1], tmp / BEST)
            else:
                raise RuntimeError(f"no saved weights for the best step {best_step}")
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER)
        torch.save(rng_states(), tmp / RNG)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        full = {**state, "format": FORMAT, "best_step": best_step, "files": files}
        (tmp / STATE).write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            fsync_path(path)
        fsync_path(tmp)
        final = self.root / folder_name(step)
        if final.exists():  # an incomplete leftover at this step (a complete one is skipped)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(self.root)
        self._write_latest(final.name)
        self.last_step = step
        if best_step is not None:
            self._best = (best_step, final / BEST)
        self._prune()
        return Checkpoint(final, full)

    def restore(self, ckpt: Checkpoint, model: Any, optimizer: Any, scheduler: Any) -> Any:
        """Load ``ckpt`` into the model, optimizer, scheduler and the RNGs; return the best
        epoch's weights as a state dict (None before the first epoch ended)."""
        import torch
        from safetensors.torch import load_model

        best_state = None
        best_step = ckpt.state.get("best_step")
        if best_step is not None:
            load_model(model, str(ckpt.path / BEST))
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self._best = (int(best_step), ckpt.path / BEST)
        load_model(model, str(ckpt.path / MODEL))
        optimizer.load_state_dict(
            torch.load(ckpt.path / OPTIMIZER, map_location="cpu", weights_only=True)
        )
        scheduler.load_state_dict(
            torch.load(ckpt.path / SCHEDULER, map_location="cpu", weights_only=True)
        )
        set_rng_states(torch.load(ckpt.path / RNG, map_location="cpu", weights_only=True))
        self.last_step = ckpt.step
        return best_state

    def _write_latest(self, name: str) -> None:
        tmp = self.root / f"{TMP_PREFIX}{LATEST}-{secrets.token_hex(4)}"
        with tmp.open("w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / LATEST)
        fsync_path(self.root)

    def _prune(self) -> None:
        """Keep the newest ``keep`` complete checkpoints; remove older ones, incomplete
        step folders and leftovers of writes that were killed."""
        kept = {c.path.name for c in self.complete()[: self.keep]}
        for path in self.root.iterdir():
            stale = path.name.startswith(TMP_PREFIX) or (
                path.name.startswith(STEP_PREFIX) and path.name not in kept
            )
            if not stale:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
