"""One settings object for every runtime, read from the environment (prefix ``FNB_``).

Key rule: nothing else in the package reads ``os.environ`` for configuration; code asks
:func:`get_settings` (or receives a :class:`Settings`), so tests and runtimes can pass
their own.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KIB = 1024  # bytes
MIB = 1024 * KIB  # bytes
HOURS = 3600  # seconds

Backend = Literal["auto", "onnx-int8", "onnx-fp32", "openvino-bf16", "torch"]
# Old setting name -> new one: accepted (as FNB_<OLD> or keyword) for one release, with a
# DeprecationWarning; the new name wins when both are given.
RENAMED = {"max_tokens": "max_input_tokens", "backend": "classify_backend"}
# A bearer key shorter than this is guessable (or a quoting slip like FNB_API_KEYS='""').
MIN_API_KEY_CHARS = 16


def _split_csv(value: object) -> object:
    """Accept ``a,b,c`` from the environment as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


HARDWARE_CLASSES = ("cpu", "gpu")  # fnbundle.tasks.base.Hardware


def runpod_endpoints(value: str) -> str | dict[str, str]:
    """``FNB_JOBS_RUNPOD_ENDPOINT`` read: one endpoint id for every job, or
    ``gpu=<id>,cpu=<id>``, the endpoint of each hardware class, where a training task's
    slug may name its own (``finetune_lora=<id>``: its jobs go there, not to its class's)."""
    if "=" not in value:
        return value.strip()
    from fnbundle.tasks import REGISTRY  # cheap: declarations only

    keys = (*HARDWARE_CLASSES, *sorted(REGISTRY.training))
    endpoints: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, endpoint = (x.strip() for x in part.partition("="))
        if not sep or not endpoint or key not in keys:
            raise ValueError(
                f"{part!r} is not <class or task>=<endpoint id> with one of "
                f"{', '.join(keys)} (e.g. gpu=abc123,cpu=def456,finetune_lora=ghi789)"
            )
        if key in endpoints:
            raise ValueError(f"{key} is given twice")
        endpoints[key] = endpoint
    return endpoints


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FNB_", env_file=None, extra="ignore", populate_by_name=True
    )

    # --- storage -----------------------------------------------------------------
    store: Path = Field(Path(".fnbundle/store"), description="Model store root.")
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path.cwd()],
        description="Folders that local dataset and model paths must stay inside.",
    )
    hf_cache: Path | None = Field(None, description="Cache folder for hf: downloads.")

    # --- network -----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=f"Bearer keys for /v1 (comma-separated), each at least {MIN_API_KEY_CHARS} "
        "characters.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_connections: int = Field(
        512,
        gt=0,
        description="Open connections (or requests in flight) beyond which a new request gets 503.",
    )
    request_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Seconds a client has to send a request's headers, and as long again for "
        "its body; a slower one gets 408 and is disconnected.",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM, seconds requests already inside get to finish (new ones get "
        "503) before they are cancelled.",
    )

    # --- request limits ------------------------------------------------------------
    max_body_bytes: int = Field(1 * MIB, gt=0, description="Larger bodies get 413.")
    max_header_bytes: int = Field(
        16 * KIB, ge=1 * KIB, description="Request line and headers together; more gets 431."
    )
    dataset_max_mib: float = Field(
        200, gt=0, description="Largest dataset upload or import (MiB); larger gets 413."
    )
    dataset_upload_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Seconds a dataset upload may take in all (each part of it must still "
        "arrive within request_timeout_s of the last).",
    )
    max_texts: int = Field(64, gt=0, description="Texts per classify request.")
    max_rows: int = Field(1000, gt=0, description="Rows per predict request.")
    max_text_chars: int = Field(4000, gt=0, description="Characters per text.")
    max_input_tokens: int = Field(
        128,
        gt=0,
        le=4096,
        validation_alias=AliasChoices("FNB_MAX_INPUT_TOKENS", "max_input_tokens"),
        description="Tokens kept per classified text (longer texts are truncated); "
        "FNB_MAX_TOKENS is its deprecated name.",
    )

    # --- serving -------------------------------------------------------------------
    classify_backend: Backend = Field(
        "auto",
        validation_alias=AliasChoices("FNB_CLASSIFY_BACKEND", "classify_backend"),
        description="Backend of classify requests that name none; FNB_BACKEND is its "
        "deprecated name.",
    )
    openvino: Literal["auto", "off"] = Field(
        "auto",
        description="`auto`: classify and embed models whose default is an ONNX export run "
        "passes of 512 padded tokens and more, or of texts of 64 tokens and more (32 and 32 "
        "against an fp32 default), with OpenVINO in "
        "bf16 where the CPU has AMX "
        "(128-token batches 1.2-2.6x faster on such a Xeon) and the OpenVINO model passes the "
        "int8 parity rule against ONNX Runtime fp32 at load; `off`: never (openvino is not "
        "imported).",
    )
    model_cache_mib: float = Field(
        4096,
        gt=0,
        description="Loaded models' artifact files (MiB) beyond which the least recently used "
        "models are unloaded.",
    )
    model_retry_s: float = Field(
        30.0,
        ge=0,
        description="Seconds after a failed model load before a request tries loading it again.",
    )
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Models loaded at start-up ('*' = every model in the store).",
    )
    batch_max_size: int = Field(64, gt=0, description="Texts per forward pass.")
    batch_max_wait_ms: float = Field(
        1.0,
        ge=0,
        description="How long a small batch waits for company (milliseconds) while requests "
        "arrive together; requests that queued during the last pass never wait.",
    )
    batch_split_tokens: int = Field(
        64,
        ge=0,
        le=1_000_000,
        description="A forward pass's fixed cost in padded tokens: a gathered batch runs as "
        "length groups where that saves more padding than the extra passes cost (0: never "
        "split).",
    )
    load_wait_s: float = Field(
        30.0, ge=0, description="How long a request waits for a model still loading."
    )
    threads: int | None = Field(
        None, gt=0, description="Threads to serve and to train with (default: cores)."
    )
    onnx_spinning: Literal["off", "run", "on"] = Field(
        "run",
        description="When ONNX Runtime's threads spin (busy-wait) for work instead of sleeping: "
        "`run` while a forward pass runs and never after it (the gateway's event loop and the "
        "tokenizer get the cores back as soon as the pass ends), `off` never (they sleep "
        "between operators: a third slower on 128-token batches), `on` also after a pass "
        "(ONNX Runtime's default: the idle threads take cores that other work needs). "
        "`true` and `false` read as `on` and `off`.",
    )
    allow_insecure_bind: bool = Field(
        False, description="Allow a non-loopback bind without API keys."
    )

    # --- operating (GET /metrics, logs) ----------------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or one JSON object per line (time, level, logger, "
        "message, request_id, route, status, duration_ms, model).",
    )
    metrics_key: SecretStr | None = Field(
        None,
        description="A bearer key for GET /metrics alone (a scraper need not hold an API "
        "key); unset: /metrics takes the API keys.",
    )
    metrics_public: bool = Field(
        False,
        description="Serve GET /metrics without a key (a scraper inside a private network).",
    )
    worker_concurrency: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Jobs one RunPod worker runs at once (deploy puts it in the template's "
        "environment); unset: the endpoint's concurrency in deploy/endpoints.toml.",
    )

    # --- generate (POST /v1/chat/completions, /v1/completions) --------------------------
    generate_backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="Engine of generate models: auto is vllm where CUDA and vLLM are "
        "importable, else transformers (CPU).",
    )
    generate_max_n: int = Field(8, ge=1, description="Completions (n) per prompt.")
    generate_max_stop: int = Field(4, ge=1, description="Stop strings per request (as OpenAI).")
    generate_max_prompts: int = Field(
        16, ge=1, description="Prompts per /v1/completions request (a list of prompts)."
    )
    generate_default_max_tokens: int = Field(
        512,
        ge=1,
        description="New tokens of a request that names no max_tokens (capped by what the "
        "model's context leaves after the prompt).",
    )
    generate_max_batch: int = Field(
        16, ge=1, description="Sequences an engine generates at once (more wait for a slot)."
    )
    generate_max_adapters: int = Field(
        8, ge=1, description="LoRA adapters an engine keeps loaded (least recently used out)."
    )

    # --- vLLM (the generate task's GPU backend) ---------------------------------------
    vllm_gpu_memory_utilization: float = Field(
        0.9, gt=0.1, le=0.98, description="Share of the GPU's memory vLLM may take."
    )
    vllm_max_lora_rank: int = Field(
        16, ge=1, description="Largest LoRA adapter rank vLLM serves (8, 16, 32, 64, ...)."
    )
    vllm_max_model_len: int | None = Field(
        None,
        gt=0,
        description="Context (prompt plus completion tokens) vLLM sizes its KV cache for; "
        "unset: the model's own (deploy/endpoints.toml's llm.context_length sets it).",
    )

    # --- jobs (training jobs and their webhooks) ---------------------------------------
    jobs_dir: Path = Field(
        Path(".fnbundle/jobs"),
        description="Job database (jobs.sqlite3) and one folder per job with its checkpoints.",
    )
    jobs_max_running: int = Field(1, ge=1, description="Worker processes training at once.")
    jobs_max_queued: int = Field(
        16, ge=0, description="Queued jobs beyond which a submit gets 429 with Retry-After."
    )
    jobs_checkpoint_every: int = Field(50, ge=1, description="Optimizer steps per checkpoint.")
    jobs_timeout_s: float = Field(
        2 * HOURS, gt=0, description="Default execution time limit of a job (seconds)."
    )
    jobs_cancel_grace_s: float = Field(
        10.0,
        ge=0,
        description="Seconds a worker gets to stop by itself (cancel, timeout) before "
        "SIGTERM; as long again before SIGKILL.",
    )
    jobs_max_attempts: int = Field(
        20,
        ge=1,
        description="Worker starts per job (resumes after a dead worker included) before "
        "the job fails; a retry starts a new count.",
    )
    webhook_secret: str = Field(
        "", description="HMAC secret that signs webhooks; a job with a webhook_url needs it."
    )
    webhook_allow_private: bool = Field(
        False, description="Let webhooks reach private/loopback addresses (development only)."
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names a webhook may reach even if they resolve to private addresses.",
    )
    jobs_runpod_endpoint: str = Field(
        "",
        description="RunPod endpoint id whose workers run the gateway's training jobs "
        "(handlers/train_classifier.py), or one endpoint per hardware class or task "
        "(`gpu=<id>,cpu=<id>,finetune_lora=<id>`: a job goes to its task's endpoint, else "
        "to its class's); empty: local worker processes.",
    )
    jobs_runpod_volume: str = Field(
        "",
        description="The RunPod network volume the training workers mount, as its S3 API's "
        "bucket (the volume id): uploaded datasets are copied there (FNB_S3_ENDPOINT_URL: "
        "the volume's datacenter endpoint, e.g. https://s3api-eu-ro-1.runpod.io).",
    )
    jobs_runpod_volume_prefix: str = Field(
        "fnbundle/store",
        description="Where the workers' store is on that volume (handlers/Dockerfile: "
        "/runpod-volume/fnbundle/store).",
    )
    jobs_runpod_url: str = Field(
        "",
        description="That endpoint's API base URL; default https://api.runpod.ai/v2/<id> "
        "(a `--rp_serve_api` dev server's URL for a local try).",
    )
    runpod_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("FNB_RUNPOD_API_KEY", "RUNPOD_API_KEY", "runpod_api_key"),
        description="RunPod API key for jobs_runpod_endpoint (RUNPOD_API_KEY works too).",
    )
    # --- end of jobs ---------------------------------------------------------------------

    # --- datasets from S3-compatible stores (AWS S3, Cloudflare R2, a RunPod volume's S3 API)
    s3_endpoint_url: str = Field(
        "", description="S3 API endpoint; empty: AWS (https://s3.<region>.amazonaws.com)."
    )
    s3_region: str = Field("", description="The store's region (auto for R2).")
    s3_access_key_id: str = Field("", description="Access key id (else AWS_ACCESS_KEY_ID...).")
    s3_secret_access_key: SecretStr = Field(SecretStr(""), description="Its secret key.")
    s3_timeout_s: float = Field(
        10.0, gt=0, le=120, description="Seconds to connect and between bytes of a download."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """Old names (keywords or FNB_* variables) still work for one release, with a warning;
        the new name wins when both are given."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in RENAMED.items():
            given_new = any(k in data for k in (new, f"FNB_{new.upper()}"))
            env_old = f"FNB_{old.upper()}"
            if old in data:
                value, said = data.pop(old), f"the setting {old!r} is deprecated: use {new!r}"
            elif env_old in os.environ:
                value, said = os.environ[env_old], f"{env_old} is deprecated: use FNB_{new.upper()}"
            else:
                continue
            warnings.warn(
                f"{said} (the old name goes in the next release).", DeprecationWarning, stacklevel=2
            )
            if not given_new:
                data[new] = value
        return data

    @field_validator(
        "data_roots", "api_keys", "cors_origins", "preload", "webhook_allowed_hosts", mode="before"
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("onnx_spinning", mode="before")
    @classmethod
    def _spinning_words(cls, value: Any) -> Any:
        """The boolean form of earlier releases: a yes is ``on``, a no is ``off``."""
        words = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, bool):
            return "on" if value else "off"
        return words.get(value.strip().lower(), value) if isinstance(value, str) else value

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, keys: list[str]) -> list[str]:
        short = [k for k in keys if len(k) < MIN_API_KEY_CHARS]
        if short:
            raise ValueError(
                f"{len(short)} of {len(keys)} API keys are shorter than {MIN_API_KEY_CHARS} "
                f"characters (the shortest has {min(map(len, short))}); use long random keys: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return keys

    @field_validator("metrics_key")
    @classmethod
    def _metrics_key_long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < MIN_API_KEY_CHARS:
            raise ValueError(
                f"the metrics key is shorter than {MIN_API_KEY_CHARS} characters; use a long "
                "random key: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return key

    @field_validator("data_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in roots]

    @field_validator("jobs_runpod_endpoint")
    @classmethod
    def _endpoint_per_class(cls, value: str) -> str:
        if "=" in value:
            runpod_endpoints(value)  # raises ValueError naming what is wrong
        return value.strip()

    @model_validator(mode="after")
    def _runpod_jobs_need_a_key(self) -> Settings:
        if self.jobs_runpod_endpoint and not self.runpod_api_key.get_secret_value():
            raise ValueError(
                "FNB_JOBS_RUNPOD_ENDPOINT is set but there is no RunPod API key: "
                "set RUNPOD_API_KEY (or FNB_RUNPOD_API_KEY)."
            )
        return self

    @property
    def store_root(self) -> Path:
        return Path(self.store).expanduser().resolve()

    @property
    def jobs_root(self) -> Path:
        return Path(self.jobs_dir).expanduser().resolve()

    @property
    def thread_count(self) -> int:
        """The threads (or worker processes) a model may use, to serve or to train:
        ``FNB_THREADS``, else every core this process may use."""
        return self.threads or len(os.sched_getaffinity(0))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
