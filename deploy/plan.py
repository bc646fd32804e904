"""The deploy plan: what a deploy will do, as JSON-ready data, and the checks before it runs.

:func:`build_plan` turns the declared endpoints (``deploy/endpoints.toml``) and the command
line's :class:`Options` into every setting, command, API mutation and curl line a deploy
prints with ``--dry-run`` and then executes; :func:`select` and :func:`check` find what would
make it fail or cost money idle. Key rule: the plan is data first: everything here is pure (no
network, no commands; the checks only look at files under the root), so ``--dry-run`` touches
nothing and a real run executes exactly the plan shown.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnbundle.endpoints import Endpoint, llm_env
from fnbundle.tasks import REGISTRY

from deploy.registry import manifest_url
from deploy.runpod_api import RunPodAPI

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = "handlers/Dockerfile"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # torch for CPU workers' images
# vLLM pins a torch whose PyPI build carries the CUDA runtime its lock holds (vllm.in).
PYPI_TORCH_INDEX = "https://pypi.org/simple"
LLM_APT_PACKAGES = "gcc libc6-dev"  # Triton compiles vLLM's kernel launchers at run time
RUNPOD_API_BASE = "https://api.runpod.ai/v2"
RUNPOD_VOLUME_MOUNT = "/runpod-volume"  # where serverless workers see a network volume
# The header lines a curl needs for each kind of Modal web endpoint auth.
MODAL_BEARER = '-H "Authorization: Bearer $FNB_API_KEY"'
MODAL_PROXY = '-H "Modal-Key: $MODAL_PROXY_TOKEN_ID" -H "Modal-Secret: $MODAL_PROXY_TOKEN_SECRET"'
RUNPOD_BEARER = '-H "Authorization: Bearer $RUNPOD_API_KEY"'

# What deploy knows of a task comes from the registry: its route and example request.
SERVING_TASKS = frozenset(REGISTRY.serving)
GATEWAY_ROUTES = {task.slug: task.route for task in REGISTRY.serving.values()}


class DeployError(Exception):
    """A check failed: nothing was published (exit 2)."""


@dataclass(frozen=True)
class Options:
    target: str
    only: tuple[str, ...] = ()
    dry_run: bool = False
    registry: str | None = None
    tag: str = "latest"
    modal_env: str | None = None
    network_volume: str | None = None
    registry_auth: str | None = None
    allow_warm: bool = False
    image_exists: bool = False  # the user vouches that every image tag is pushed
    images: tuple[tuple[str, str], ...] = ()  # (endpoint name, prebuilt image ref)
    modal_secret: str = ""  # FNB_MODAL_SECRET: the Secret with FNB_API_KEYS the apps attach
    modal_proxy_auth: bool = False  # FNB_MODAL_PROXY_AUTH: Modal's proxy checks a token
    public: bool = False  # a Modal web endpoint without either is meant
    root: Path = REPO
    config: Path = field(default_factory=lambda: REPO / "deploy" / "endpoints.toml")


# --- the plan (pure) -------------------------------------------------------------------
def example_input(endpoint: Endpoint, target: str) -> dict[str, Any]:
    """The JSON body a client sends: the gateway's body, also RunPod's ``input``."""
    if endpoint.task in REGISTRY.serving:
        example = REGISTRY.serving[endpoint.task].example
        return {**example, "model": endpoint.model or example["model"]}
    if endpoint.task in REGISTRY.training:
        example = REGISTRY.training[endpoint.task].example
        # `modal run` uploads a local file; a RunPod worker reads datasets from the volume.
        file = example["data"]
        data = f"data/{file}" if target == "modal" else f"{RUNPOD_VOLUME_MOUNT}/datasets/{file}"
        return {**example, "data": data}
    return {"model": endpoint.model} if endpoint.model else {}


def runpod_name(endpoint: Endpoint) -> str:
    """One name for the RunPod template and endpoint, so a re-deploy finds and updates them."""
    return "fnbundle-" + endpoint.name.replace("_", "-")


def image_ref(endpoint: Endpoint, options: Options) -> str:
    prebuilt = dict(options.images).get(endpoint.name)
    return prebuilt or f"{options.registry or '<registry>'}/{endpoint.runpod.image}:{options.tag}"


def image_source(endpoint: Endpoint, options: Options) -> str:
    """How deploy knows the image exists: "build" (pushed in this run, or found in the
    registry when no Docker engine answers), "prebuilt" (--image, found in the registry)
    or "vouched" (--image-exists: not checked)."""
    if options.image_exists:
        return "vouched"
    return "prebuilt" if endpoint.name in dict(options.images) else "build"


def worker_env(endpoint: Endpoint) -> dict[str, str]:
    """What a worker reads at run time, from the declaration: in the template, so a redeploy
    changes it without a rebuild (the image's copy of endpoints.toml is only a fallback)."""
    env = {"FNB_WORKER_CONCURRENCY": str(endpoint.runpod.concurrency)}
    if endpoint.model:
        env["FNB_PRELOAD"] = endpoint.model  # the endpoint's model, not the whole store
    return {**env, **llm_env(endpoint.llm), **endpoint.runpod.env}


def template_input(endpoint: Endpoint, options: Options) -> dict[str, Any]:
    """``saveTemplate`` input: a serverless template running the handler image."""
    fields: dict[str, Any] = {
        "name": runpod_name(endpoint),
        "imageName": image_ref(endpoint, options),
        "isServerless": True,
        "containerDiskInGb": endpoint.runpod.container_disk_gb,
        "volumeInGb": 0,  # serverless workers get storage from the network volume instead
        "dockerArgs": "",
        "ports": "",
        "env": [{"key": k, "value": v} for k, v in sorted(worker_env(endpoint).items())],
        "isPublic": False,
        "readme": endpoint.description,
    }
    if options.registry_auth:
        fields["containerRegistryAuthId"] = options.registry_auth
    return fields


def endpoint_input(endpoint: Endpoint, options: Options) -> dict[str, Any]:
    """``saveEndpoint`` input: scaling, hardware and timeouts straight from the declaration."""
    spec = endpoint.runpod
    fields: dict[str, Any] = {
        "name": runpod_name(endpoint),
        "templateId": "<saveTemplate.id>",
        "workersMin": spec.workers_min,
        "workersMax": spec.workers_max,
        "idleTimeout": spec.idle_timeout_s,
        "executionTimeoutMs": spec.execution_timeout_s * 1000,
        "scalerType": spec.scaler_type,
        "scalerValue": spec.scaler_value,
        "flashBootType": "FLASHBOOT" if spec.flashboot else "OFF",
    }
    if spec.compute == "GPU":
        fields["gpuIds"] = ",".join(spec.gpu_ids)  # pools in order of preference
        fields["gpuCount"] = 1
        # Hosts whose driver runs one of these; the SDK sends the same comma-separated string.
        fields["allowedCudaVersions"] = ",".join(spec.cuda_versions)
    else:
        fields["instanceIds"] = list(spec.cpu_flavor_ids)
    if options.network_volume:
        fields["networkVolumeId"] = options.network_volume
    return fields


def modal_auth(options: Options) -> dict[str, Any]:
    """What a Modal web endpoint checks, as the apps see it (functions/images.py reads the
    same FNB_MODAL_* variables, which ``modal deploy`` inherits)."""
    return {
        "bearer_secret": options.modal_secret or None,
        "proxy_auth": options.modal_proxy_auth,
        "public": not (options.modal_secret or options.modal_proxy_auth),
    }


def _modal_headers(options: Options) -> str:
    headers = [MODAL_BEARER] if options.modal_secret else []
    headers += [MODAL_PROXY] if options.modal_proxy_auth else []
    return "".join(f"{h} " for h in headers)


def _gateway_curl(url: str, endpoint: Endpoint, options: Options) -> str:
    if endpoint.task in SERVING_TASKS:
        route = GATEWAY_ROUTES[endpoint.task]
        body = example_input(endpoint, "modal")
    else:  # a training app serves the job routes; a relative path names a Volume dataset
        route = "/v1/jobs"
        params = {**example_input(endpoint, "modal"), "data": "reviews.csv"}
        body = {"task": endpoint.task, "params": params}
    return (
        f"curl -s {url}{route} {_modal_headers(options)}"
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    )


def _runpod_curl(url: str, endpoint: Endpoint) -> str:
    body = shlex.quote(json.dumps({"input": example_input(endpoint, "runpod")}))
    return f"curl -s {url} {RUNPOD_BEARER} -H 'Content-Type: application/json' -d {body}"


def _modal_entry(endpoint: Endpoint, options: Options) -> dict[str, Any]:
    spec = endpoint.modal
    sizing = endpoint.llm_gpus()  # an LLM's memory breakdown and GPU; None for other tasks
    argv = ["modal", "deploy"]
    if options.modal_env:
        argv += ["--env", options.modal_env]
    argv += ["--tag", options.tag, spec.file]
    workspace = "<workspace>" + (f"-{options.modal_env}" if options.modal_env else "")
    url = f"https://{workspace}--{spec.app}-<class>-<method>.modal.run"  # modal deploy prints it
    entry: dict[str, Any] = {
        "task": endpoint.task,
        "app": spec.app,
        "scaling": {
            "min": spec.min_containers,
            "max": spec.max_containers,
            "buffer": spec.buffer_containers,
            "scaledown_window_s": spec.scaledown_window_s,
            "concurrency": spec.max_inputs,
            "gpu": sizing["modal_gpu"] if sizing else spec.gpu,
            "cpu": spec.cpu,
            "memory_snapshot": spec.enable_memory_snapshot,
        },
        "llm": sizing,
        # What OpenAI(base_url=...) takes for an LLM endpoint: the gateway's /v1.
        "openai_base_url": f"{url}/v1" if sizing else None,
        # How long one request to the web endpoint may last: a job's event stream on a
        # training app, one request on a serving app (its class's timeout).
        "web_timeout_s": spec.web_timeout_s or spec.timeout_s,
        "auth": modal_auth(options),
        "settings": spec.model_dump(),
        "steps": [{"run": argv}],
        "url": url,
        "curl": _gateway_curl(url, endpoint, options),
    }
    if endpoint.task not in SERVING_TASKS:
        flags = " ".join(
            f"--{k} {shlex.quote(str(v))}" for k, v in example_input(endpoint, "modal").items()
        )
        # --detach: the job keeps training when the terminal goes (it is a job either way).
        entry["invoke"] = f"modal run --detach {spec.file} {flags}".strip()
    return entry


def _runpod_entry(endpoint: Endpoint, options: Options) -> dict[str, Any]:
    spec = endpoint.runpod
    image = image_ref(endpoint, options)
    source = image_source(endpoint, options)
    steps: list[dict[str, Any]] = []
    if source == "build":
        handler = Path(spec.handler).stem
        build = ["docker", "build", "--platform", "linux/amd64", "-f", DOCKERFILE]
        build += ["--build-arg", f"HANDLER={handler}"]
        if spec.compute == "CPU":  # a CPU worker that trains gets torch's CPU build
            build += ["--build-arg", f"TORCH_INDEX={CPU_TORCH_INDEX}"]
        elif endpoint.llm is not None:  # a vLLM worker: the torch vLLM pins, and a C
            # compiler for Triton's kernel launchers
            build += ["--build-arg", f"TORCH_INDEX={PYPI_TORCH_INDEX}"]
            build += ["--build-arg", f"APT_PACKAGES={LLM_APT_PACKAGES}"]
        build += ["-t", image, "."]
        steps += [{"run": build}, {"run": ["docker", "push", image]}]
    name = runpod_name(endpoint)
    steps += [
        {"api": "saveTemplate", "upsert_by_name": name, "input": template_input(endpoint, options)},
        {"api": "saveEndpoint", "upsert_by_name": name, "input": endpoint_input(endpoint, options)},
    ]
    route = "runsync" if endpoint.task in SERVING_TASKS else "run"
    url = f"{RUNPOD_API_BASE}/<endpoint-id>/{route}"
    return {
        "task": endpoint.task,
        "name": name,
        "image": image,
        "image_source": source,
        # Asked when the image is not built in this run (no Docker engine, or --image).
        "image_check": None if source == "vouched" else f"HEAD {manifest_url(image)}",
        # A training worker keeps its models and checkpoints on the volume.
        "needs_volume": endpoint.task not in SERVING_TASKS,
        "worker_env": worker_env(endpoint),
        "scaling": {
            "min": spec.workers_min,
            "max": spec.workers_max,
            "scaledown_window_s": spec.idle_timeout_s,
            "concurrency": spec.concurrency,  # FNB_WORKER_CONCURRENCY in the template
            "gpu": spec.gpu_ids or None,
            "cpu": spec.cpu_flavor_ids or None,
            "cuda_versions": spec.cuda_versions or None,
            "flashboot": spec.flashboot,
        },
        "llm": endpoint.llm_gpus(),
        # RunPod's OpenAI-compatible route (the worker answers its openai_route jobs).
        "openai_base_url": f"{RUNPOD_API_BASE}/<endpoint-id>/openai/v1" if endpoint.llm else None,
        "settings": spec.model_dump(),
        "steps": steps,
        "url": url,
        "curl": _runpod_curl(url, endpoint),
    }


def build_plan(target: str, endpoints: Sequence[Endpoint], options: Options) -> dict[str, Any]:
    """Everything a deploy will do, as JSON-ready data. Pure: no I/O, no network."""
    entry = _modal_entry if target == "modal" else _runpod_entry
    plan: dict[str, Any] = {
        "target": target,
        "tag": options.tag,
        "declaration": str(options.config),
        "endpoints": {e.name: entry(e, options) for e in endpoints},
    }
    if target == "runpod":
        plan["registry"] = options.registry or "<registry>"
        plan["network_volume"] = options.network_volume or (
            "none given: each endpoint keeps the volume it has now (networkVolumeId); "
            "an endpoint with needs_volume and none is refused"
        )
        plan["reads"] = [RunPodAPI.STATE_QUERY]
        plan["images"] = (
            "vouched for by --image-exists: not checked"
            if options.image_exists
            else "built and pushed in this run when a Docker engine answers; otherwise, and "
            "for --image, each image_check must find the tag in its registry, or nothing is "
            "published (exit 2)"
        )
        plan["upsert"] = (
            "a template or endpoint with the same name is updated in place "
            "(its id goes into the input); otherwise it is created"
        )
    else:
        plan["auth"] = modal_auth(options)
    return plan


# --- checks (before anything runs) -----------------------------------------------------
def select(endpoints: Mapping[str, Endpoint], only: Sequence[str]) -> list[Endpoint]:
    unknown = [name for name in only if name not in endpoints]
    if unknown:
        raise DeployError(
            f"unknown endpoint {', '.join(map(repr, unknown))}; "
            f"declared: {', '.join(sorted(endpoints))}"
        )
    return [endpoints[n] for n in only] if only else list(endpoints.values())


def check(target: str, endpoints: Sequence[Endpoint], options: Options) -> list[str]:
    """Problems that would make the deploy fail or cost money idle; empty when fine."""
    problems = []
    for e in endpoints:
        if target == "modal":
            entry, warm = e.modal.file, e.modal.min_containers
            what = f"endpoints.{e.name}.modal.min_containers = {warm}"
        else:
            entry, warm = e.runpod.handler, e.runpod.workers_min
            what = f"endpoints.{e.name}.runpod.workers_min = {warm}"
        if not (options.root / entry).is_file():
            problems.append(f"{e.name}: {entry} does not exist")
        if warm and not options.allow_warm:
            problems.append(f"{what} keeps workers billed while idle; pass --allow-warm to mean it")
    building = any(image_source(e, options) == "build" for e in endpoints)
    if target == "runpod" and building and not (options.root / DOCKERFILE).is_file():
        problems.append(f"{DOCKERFILE} does not exist")
    if target == "runpod":
        declared = {e.name for e in endpoints}
        problems += [
            f"--image {n}=...: {n!r} is not deployed"
            for n, _ in options.images
            if n not in declared
        ]
    if target == "modal" and endpoints and modal_auth(options)["public"] and not options.public:
        apps = ", ".join(e.modal.app for e in endpoints)
        problems.append(
            f"the web endpoints of {apps} would answer anyone (a training app's /v1/jobs "
            "starts paid GPU runs): set FNB_MODAL_SECRET=<Secret holding FNB_API_KEYS> for "
            "bearer keys or FNB_MODAL_PROXY_AUTH=1 for Modal proxy auth tokens, or pass "
            "--public to mean it"
        )
    return problems
