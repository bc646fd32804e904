"""The container images and the model-store Volume shared by every Modal app in functions/.

Three images, built once and reused by every app: ``cpu_image`` serves (ONNX Runtime, no
torch), ``gpu_image`` trains (torch with CUDA, transformers, the ONNX exporter, the tabular
stack), on a GPU or, for the tabular models, on CPU cores alone, and ``vllm_image`` serves
language models on a GPU (vLLM with the torch it pins). All carry
the ``fnbundle`` package and ``deploy/endpoints.toml``, and point the store at the Volume.

Key rules: every package comes from the lock, ``requirements/`` (``make lock``), at its exact
version and nothing else (an image must not change under a deployed app, and it runs what the
tests ran); tests/images/ installs each image's list in a fresh virtualenv and serves from it;
defining an image touches no network (Modal builds it at deploy time); deploy-time options
(``FNB_MODAL_SECRET``, ``FNB_MODAL_PROXY_AUTH``, ``FNB_MODAL_LOG_FORMAT``) are baked into the
image environment, so a container importing an app sees the same decorators as the machine
that deployed it (and logs in the format asked for: ``FNB_LOG_FORMAT`` in the container).

Run the apps from the repository root: ``modal deploy functions/classify.py``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal

import modal
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.11"

# One Volume holds the model store and uploaded datasets, the same layout as a local store.
VOLUME_NAME = "fnbundle-store"
VOLUME_DIR = PurePosixPath("/vol")  # where every app mounts the Volume
STORE_DIR = VOLUME_DIR / "store"  # FNB_STORE: models/, aliases/, .staging/
DATASETS_DIR = VOLUME_DIR / "datasets"  # FNB_DATA_ROOTS: training data uploaded by `modal run`
volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)

# The Secret named by FNB_MODAL_SECRET must hold this key (comma-separated bearer keys).
API_KEYS_ENV = "FNB_API_KEYS"


class DeployOptions(BaseSettings):
    """Choices made when deploying: ``FNB_MODAL_SECRET=fnbundle-api-keys modal deploy ...``."""

    model_config = SettingsConfigDict(env_prefix="FNB_MODAL_", env_file=None, extra="ignore")

    secret: str = ""  # name of a modal.Secret with FNB_API_KEYS; "" = no bearer check
    proxy_auth: bool = False  # also require Modal's Modal-Key / Modal-Secret proxy headers
    log_format: Literal["text", "json"] = "text"  # the containers' FNB_LOG_FORMAT

    def secrets(self) -> list[modal.Secret]:
        if not self.secret:
            return []
        return [modal.Secret.from_name(self.secret, required_keys=[API_KEYS_ENV])]

    def env(self) -> dict[str, str]:
        return {
            "FNB_MODAL_SECRET": self.secret,
            "FNB_MODAL_PROXY_AUTH": str(int(self.proxy_auth)),
            "FNB_LOG_FORMAT": self.log_format,  # Modal's log stream gets the gateway's lines
        }


options = DeployOptions()

# Each image's packages, one lock file per layer, in build order. The GPU image installs
# torch's CUDA build alone first: the largest layer, and the one that changes least.
LOCKS = REPO / "requirements"
PLAYGROUND_STATIC = REPO / "shared" / "fnbundle" / "playground" / "static"
IMAGE_LOCKS = {
    "cpu_image": ("serve.txt",),  # the core dependencies: ONNX Runtime, no torch
    "gpu_image": ("torch-cuda.txt", "train.txt"),  # + the `train` extra
    # The generate task's GPU server: vLLM with its own torch and CUDA runtime, and the core
    # dependencies resolved with them (requirements/vllm.in says why it is a lock of its own).
    "vllm_image": ("vllm.txt",),
}
# The lock is complete: pip installs exactly its lines and resolves nothing at build time.
PIP_OPTIONS = "--no-deps"


def locked_packages(lock: str) -> list[str]:
    """The requirement lines of ``requirements/<lock>``: ``name==version``, markers kept."""
    lines = (line.split(" #", 1)[0].strip() for line in (LOCKS / lock).read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def image_layers(image: str) -> list[list[str]]:
    """The packages ``image`` (a key of :data:`IMAGE_LOCKS`) installs, layer by layer."""
    return [locked_packages(lock) for lock in IMAGE_LOCKS[image]]


# Debian packages an image needs at run time: Triton (vLLM's kernels) compiles its kernel
# launchers with the system C compiler when they are first used.
IMAGE_APT = {"vllm_image": ("gcc", "libc6-dev")}


def locked_image(image: str) -> modal.Image:
    base = modal.Image.debian_slim(python_version=PYTHON_VERSION)
    if IMAGE_APT.get(image):
        base = base.apt_install(*IMAGE_APT[image])
    for packages in image_layers(image):
        base = base.pip_install(*packages, extra_options=PIP_OPTIONS)
    return base


STORE_ENV = {
    "FNB_STORE": str(STORE_DIR),
    "FNB_DATA_ROOTS": str(DATASETS_DIR),
    "FNB_HF_CACHE": str(VOLUME_DIR / "hf"),  # hf: bases download once, into the Volume
}


def with_project(image: modal.Image) -> modal.Image:
    """Settings and project files last: editing code re-uploads files, it rebuilds nothing.

    The lock files travel too: a container imports this module, which reads them."""
    return (
        image.env({**STORE_ENV, **options.env()})
        .add_local_python_source("fnbundle")
        # The playground's page and scripts: add_local_python_source ships .py files only.
        .add_local_dir(PLAYGROUND_STATIC, "/root/fnbundle/playground/static")
        .add_local_file(REPO / "deploy" / "endpoints.toml", "/root/deploy/endpoints.toml")
        .add_local_dir(LOCKS, "/root/requirements", ignore=["*.in"])
        .add_local_file(Path(__file__), "/root/functions/images.py")
        # What the serving apps and the training apps share: `modal deploy` uploads the
        # entry file only.
        .add_local_file(Path(__file__).with_name("serving.py"), "/root/functions/serving.py")
        .add_local_file(Path(__file__).with_name("training.py"), "/root/functions/training.py")
    )


cpu_image = with_project(locked_image("cpu_image"))
gpu_image = with_project(locked_image("gpu_image"))
vllm_image = with_project(locked_image("vllm_image"))
