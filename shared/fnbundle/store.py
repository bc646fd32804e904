"""The model store: where trained artifacts live, and how they are named and published.

Layout (identical on local disk, a Modal Volume and a RunPod network volume)::

    <root>/models/<id>/          one complete artifact per folder, never modified
        manifest.json            task, base model, created, files (size, sha256), ...
        model.safetensors, model.onnx, model.int8.onnx, tokenizer.json, ...
    <root>/aliases/<name>.json   {"id": ...}: the newest complete version of <name>
    <root>/.staging/<id>/        artifacts being written; readers never look here

Key rules: an artifact is written under ``.staging`` and renamed into ``models/`` only
when complete, so a reader never sees half an artifact; a model reference can never leave
the root (names are a strict slug, checked before any path is built); files that can run
code when loaded (pickle, joblib, ``.bin``/``.pt``) are refused. Nothing is read through a
symlink: a symlinked model folder, alias or file is refused, a manifest's file paths must
be relative and stay inside the artifact, and every file read resolves inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from fnbundle.errors import ArtifactCorrupt, InvalidRequest, NotFound, UnsafeArtifact

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
UNSAFE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".bin", ".pt", ".pth", ".ckpt"})
_CHUNK = 1024 * 1024  # bytes read at a time when hashing


def validate_name(ref: str, *, field: str = "model") -> str:
    """Return ``ref`` if it is a valid model name or id, else raise a 400 naming the rule."""
    if not isinstance(ref, str) or not NAME_RE.fullmatch(ref):
        raise InvalidRequest(
            f"Invalid model name {str(ref)[:100]!r}: use 1-80 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit.",
            field=field,
        )
    return ref


def is_unsafe_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in UNSAFE_SUFFIXES


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in ``folder`` (recursively), manifest excluded."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise UnsafeArtifact(f"Artifact file {rel} is a symlink; artifacts hold real files.")
        if not path.is_file() or rel == MANIFEST:
            continue
        if is_unsafe_file(path):
            raise UnsafeArtifact(f"Refusing to store {rel}: pickle-based formats can run code.")
        entries[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return entries


def check_manifest_path(artifact_id: str, rel: object) -> str:
    """``rel`` if it is a relative POSIX path that stays inside the artifact, else refused."""
    pure = PurePosixPath(rel) if isinstance(rel, str) else None
    if (
        pure is None
        or not rel
        or "\x00" in str(rel)
        or "\\" in str(rel)
        or pure.is_absolute()
        or any(part in {"", ".", ".."} for part in str(rel).split("/"))
    ):
        raise ArtifactCorrupt(
            f"Artifact {artifact_id}: manifest lists the file {str(rel)[:100]!r}; file paths "
            "must be relative and inside the artifact."
        )
    return str(rel)


def inside_artifact(artifact_id: str, folder: Path, rel: str) -> Path:
    """``folder / rel``, refused if any part of it is a symlink or it resolves elsewhere."""
    check_manifest_path(artifact_id, rel)
    path = folder / rel
    current = folder
    for part in PurePosixPath(rel).parts:
        current = current / part
        if current.is_symlink():
            raise ArtifactCorrupt(
                f"Artifact {artifact_id}: {rel} is a symlink; artifacts hold real files."
            )
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ArtifactCorrupt(f"Artifact {artifact_id}: {rel} lies outside the artifact.")
    return path


@dataclass(frozen=True)
class Artifact:
    """One complete, published model version."""

    id: str
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.id))

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    def file(self, rel: str) -> Path:
        """The real path of a manifest file, refused if it is a symlink or leaves the folder."""
        if rel not in self.manifest.get("files", {}):
            raise ArtifactCorrupt(f"Artifact {self.id} has no file {rel} in its manifest.")
        return inside_artifact(self.id, self.path, rel)

    def summary(self) -> dict[str, Any]:
        """What every artifact says about itself; its task adds its own fields (labels)."""
        m = self.manifest
        return {
            "id": self.id,
            "name": self.name,
            "task": self.task,
            "base_model": m.get("base_model"),
            "created": m.get("created"),
            "metrics": m.get("metrics", {}),
            "backends": m.get("backends") if isinstance(m.get("backends"), list) else [],
            "default_backend": m.get("default_backend"),
        }


class Store:
    """A model store rooted at one folder (see the module docstring for the layout)."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.models_dir = self.root / "models"
        self.aliases_dir = self.root / "aliases"
        self.staging_dir = self.root / ".staging"
        # name -> (the alias file's identity, the version id it named): a served request
        # resolves its model by name, and a stat is cheaper than reading and parsing JSON.
        self._aliases: dict[str, tuple[tuple[int, int, int], str]] = {}

    # --- writing --------------------------------------------------------------------
    def new_id(self, name: str) -> str:
        validate_name(name, field="name")
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return f"{name}-{stamp}-{secrets.token_hex(3)}"

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A fresh staging folder for a new version of ``name``; removed on error."""
        folder = self.staging_dir / self.new_id(name)
        folder.mkdir(parents=True)
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # A folder that was not published (no exception, no publish) is dropped too.
        shutil.rmtree(folder, ignore_errors=True)

    def publish(self, staged: Path, manifest: dict[str, Any]) -> Artifact:
        """Hash every file, write the manifest, move the folder into place, point the alias."""
        staged = Path(staged)
        artifact_id = staged.name
        name = str(manifest["name"])
        validate_name(name, field="name")
        full = {
            **manifest,
            "format": MANIFEST_FORMAT,
            "id": artifact_id,
            "created": manifest.get("created") or datetime.now(UTC).isoformat(),
            "files": file_entries(staged),
        }
        _write_json_atomic(staged / MANIFEST, full)
        fsync_path(staged)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        final = self.models_dir / artifact_id
        os.rename(staged, final)  # atomic on one filesystem: all or nothing
        fsync_path(self.models_dir)
        self._point_alias(name, artifact_id, full["created"])
        return Artifact(artifact_id, final, full)

    def _point_alias(self, name: str, artifact_id: str, created: str) -> None:
        self.aliases_dir.mkdir(parents=True, exist_ok=True)
        alias = self.aliases_dir / f"{name}.json"
        try:
            current = json.loads(alias.read_text())
            if str(current.get("created", "")) > created:
                return  # a newer version was published meanwhile
        except (OSError, ValueError):
            pass
        _write_json_atomic(alias, {"id": artifact_id, "created": created})

    # --- reading --------------------------------------------------------------------
    def resolve_id(self, ref: str, *, field: str = "model") -> str:
        """Map a name (newest version) or a version id to a version id."""
        validate_name(ref, field=field)
        # Plain string paths: this runs on every served request (pathlib's joins cost more
        # than the two stats).
        if os.path.isfile(os.path.join(self.models_dir, ref, MANIFEST)):
            return ref
        alias = os.path.join(self.aliases_dir, f"{ref}.json")
        try:
            info = os.lstat(alias)
        except FileNotFoundError:
            raise NotFound(f"Model {ref!r} not found in the store.", field=field) from None
        except OSError as exc:
            raise ArtifactCorrupt(f"Alias for model {ref!r} is unreadable: {exc}") from None
        if stat.S_ISLNK(info.st_mode):
            raise ArtifactCorrupt(f"Alias for model {ref!r} is a symlink; it is refused.")
        identity = (info.st_ino, info.st_mtime_ns, info.st_size)
        cached = self._aliases.get(ref)
        if cached is not None and cached[0] == identity:
            return cached[1]
        try:
            target = json.loads(Path(alias).read_text(encoding="utf-8"))["id"]
        except FileNotFoundError:
            raise NotFound(f"Model {ref!r} not found in the store.", field=field) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactCorrupt(f"Alias for model {ref!r} is unreadable: {exc}") from None
        if not isinstance(target, str) or not NAME_RE.fullmatch(target):
            raise ArtifactCorrupt(f"Alias for model {ref!r} names no valid version id.")
        self._aliases[ref] = (identity, target)
        return target

    def get(self, artifact_id: str) -> Artifact:
        validate_name(artifact_id)
        folder = self.models_dir / artifact_id
        if folder.is_symlink() or (folder / MANIFEST).is_symlink():
            raise ArtifactCorrupt(
                f"Artifact {artifact_id} is a symlink; the store serves real folders only."
            )
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            if folder.is_dir():
                raise ArtifactCorrupt(
                    f"Artifact {artifact_id}: manifest.json is missing."
                ) from None
            raise NotFound(f"Model {artifact_id!r} not found in the store.") from None
        except (OSError, ValueError) as exc:
            raise ArtifactCorrupt(f"Artifact {artifact_id}: unreadable manifest ({exc}).") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ArtifactCorrupt(f"Artifact {artifact_id}: manifest has no file list.")
        for rel, meta in manifest["files"].items():
            check_manifest_path(artifact_id, rel)
            if not isinstance(meta, dict):
                raise ArtifactCorrupt(f"Artifact {artifact_id}: manifest entry {rel} is malformed.")
        return Artifact(artifact_id, folder, manifest)

    def resolve(self, ref: str, *, field: str = "model") -> Artifact:
        return self.get(self.resolve_id(ref, field=field))

    def list(self) -> list[Artifact]:
        if not self.models_dir.is_dir():
            return []
        found = []
        for folder in self.models_dir.iterdir():
            if folder.is_dir() and NAME_RE.fullmatch(folder.name):
                try:
                    found.append(self.get(folder.name))
                except (ArtifactCorrupt, NotFound):
                    continue
        return sorted(found, key=lambda a: str(a.manifest.get("created", "")))

    def latest_ids(self) -> dict[str, str]:
        """Every model name with the id its alias points at."""
        names: dict[str, str] = {}
        if self.aliases_dir.is_dir():
            for alias in sorted(self.aliases_dir.glob("*.json")):
                try:
                    names[alias.stem] = self.resolve_id(alias.stem)
                except (InvalidRequest, NotFound, ArtifactCorrupt):
                    continue
        return names

    def verify(self, artifact: Artifact, hash_files: Iterable[str] | None = None) -> None:
        """Check every listed file exists with its size; hash ``hash_files`` (all if None).

        Loading hashes the files it is about to read and checks the size of the rest, so
        a changed byte or a missing file is caught before anything is served.
        """
        files: dict[str, dict[str, Any]] = artifact.manifest["files"]
        to_hash = set(files) if hash_files is None else set(hash_files)
        for rel, meta in files.items():
            path = inside_artifact(artifact.id, artifact.path, rel)
            if is_unsafe_file(rel):
                raise UnsafeArtifact(f"Artifact {artifact.id}: {rel} is a pickle-based format.")
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise ArtifactCorrupt(f"Artifact {artifact.id}: file {rel} is missing.") from None
            if size != meta.get("size"):
                raise ArtifactCorrupt(f"Artifact {artifact.id}: file {rel} has the wrong size.")
            if rel in to_hash and sha256_file(path) != meta.get("sha256"):
                raise ArtifactCorrupt(
                    f"Artifact {artifact.id}: file {rel} does not match its sha256 in the manifest."
                )
