"""Publish the endpoints of ``deploy/endpoints.toml`` to Modal or RunPod.

    python deploy/deploy.py --target modal|runpod [--only classify] [--dry-run]

Modal: ``modal deploy functions/<task>.py`` per app (the apps read their scaling from the
declaration). RunPod: build and push ``handlers/Dockerfile`` per handler, then create or
update a serverless template and endpoint of the same name through the runpod SDK's GraphQL
client, and print the URL and a curl line that carries the auth the endpoint really needs.

Key rule: the plan is data first. :func:`build_plan` is a pure function; ``--dry-run``
prints its JSON (every setting, command, check and API mutation) and touches nothing, and a
real run executes exactly that plan. Every check (declaration, endpoint names, files, warm
workers, Modal auth, tokens, registry, the RunPod image and network volume) runs before the
first command: a failed check publishes nothing and exits 2. A failure while publishing
exits 1. Deploy never points an endpoint at an image it cannot vouch for (pushed in this
run, found in its registry, or vouched for with ``--image-exists``), and never publishes a
Modal web endpoint that answers anyone unless ``--public`` says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fnbundle.endpoints import Endpoint, llm_env, load_endpoints
from fnbundle.errors import FnbError
from fnbundle.tasks import REGISTRY
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = "handlers/Dockerfile"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # torch for CPU workers' images
# vLLM pins a torch whose PyPI build carries the CUDA runtime its lock holds (vllm.in).
PYPI_TORCH_INDEX = "https://pypi.org/simple"
LLM_APT_PACKAGES = "gcc libc6-dev"  # Triton compiles vLLM's kernel launchers at run time
RUNPOD_API_BASE = "https://api.runpod.ai/v2"
RUNPOD_VOLUME_MOUNT = "/runpod-volume"  # where serverless workers see a network volume
MODAL_URL = re.compile(r"https://[a-z0-9-]+--[a-z0-9-]+\.modal\.run")
GIT_TIMEOUT_S = 10  # seconds
# Each registry request (manifest HEAD, token): a check must not hang a deploy.
REGISTRY_TIMEOUT_S = 5.0  # seconds
DOCKER_HUB = "registry-1.docker.io"  # where docker.io/<user>/<repo> is served
# A manifest HEAD names every manifest kind it accepts, or the registry may answer 404
# for a multi-platform index.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
# The header lines a curl needs for each kind of Modal web endpoint auth.
MODAL_BEARER = '-H "Authorization: Bearer $FNB_API_KEY"'
MODAL_PROXY = '-H "Modal-Key: $MODAL_PROXY_TOKEN_ID" -H "Modal-Secret: $MODAL_PROXY_TOKEN_SECRET"'
RUNPOD_BEARER = '-H "Authorization: Bearer $RUNPOD_API_KEY"'

# What deploy knows of a task comes from the registry: its route and example request.
SERVING_TASKS = frozenset(REGISTRY.serving)
GATEWAY_ROUTES = {task.slug: task.route for task in REGISTRY.serving.values()}

err = Console(stderr=True, highlight=False, soft_wrap=True)  # long lines stay whole


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


def modal_token_found(environ: Mapping[str, str]) -> bool:
    if environ.get("MODAL_TOKEN_ID") and environ.get("MODAL_TOKEN_SECRET"):
        return True
    home = Path(environ.get("HOME") or Path.home())
    config = Path(environ.get("MODAL_CONFIG_PATH") or home / ".modal.toml")
    try:
        profiles = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return any(
        isinstance(p, dict) and p.get("token_id") and p.get("token_secret")
        for p in profiles.values()
    )


def git_tag(root: Path) -> str:
    """The commit's short sha, so every image names the code it holds; else 'latest'."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "latest"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "latest"


# --- the boundaries: local commands and the RunPod API ---------------------------------
class Shell:
    """Runs local commands (modal, docker). Tests replace it with a recorder."""

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def run(self, argv: Sequence[str], cwd: Path, *, quiet: bool = False) -> tuple[int, str]:
        """Exit status and output; the output also streams to stderr unless ``quiet``."""
        try:
            if quiet:
                done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True)
                return done.returncode, done.stdout + done.stderr
            with subprocess.Popen(
                list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as proc:
                assert proc.stdout is not None
                lines = []
                for line in proc.stdout:
                    sys.stderr.write(line)
                    lines.append(line)
                return proc.wait(), "".join(lines)
        except OSError as exc:
            return 127, str(exc)


def split_image_ref(ref: str) -> tuple[str, str, str]:
    """``registry host, repository, tag or digest`` of an image reference, as docker reads
    it: a first component with a dot or a port (or ``localhost``) is the registry, else
    Docker Hub; Docker Hub's one-part names live under ``library/``."""
    name, _, digest = ref.partition("@")
    tag = "latest"
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
    else:
        host, repository = "docker.io", name
    if host in {"docker.io", "index.docker.io"}:
        host = DOCKER_HUB
        repository = repository if "/" in repository else f"library/{repository}"
    return host, repository, digest or tag


def manifest_url(ref: str) -> str:
    """The Registry HTTP API v2 URL whose HEAD says whether ``ref`` was pushed."""
    host, repository, reference = split_image_ref(ref)
    local = host.split(":")[0] in {"localhost", "127.0.0.1"}  # docker allows plain HTTP there
    return f"{'http' if local else 'https'}://{host}/v2/{repository}/manifests/{reference}"


class Registry:
    """Asks an image registry whether a tag exists: the Registry HTTP API v2 manifest HEAD,
    with the anonymous bearer token the registry's 401 points to (Docker Hub, GHCR, ...).

    Answers "found", "missing", or why it cannot tell (a private repository, no network):
    deploy publishes only on "found". Tests pass an ``httpx.MockTransport``.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None):
        self._transport = transport

    def check(self, ref: str) -> str:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        url = manifest_url(ref)
        try:
            with httpx.Client(
                transport=self._transport, timeout=REGISTRY_TIMEOUT_S, follow_redirects=True
            ) as client:
                answer = client.head(url, headers=headers)
                if answer.status_code == 401 and (token := self._token(client, answer)):
                    answer = client.head(url, headers={**headers, "Authorization": token})
        except httpx.HTTPError as exc:
            return f"the registry did not answer ({type(exc).__name__})"
        if answer.status_code == 200:
            return "found"
        if answer.status_code == 404:
            return "missing"
        if answer.status_code in {401, 403}:  # private, or (Docker Hub) a repository not there
            return "the registry wants credentials for it (or the repository does not exist)"
        return f"the registry answered {answer.status_code}"

    @staticmethod
    def _token(client: httpx.Client, challenge: httpx.Response) -> str | None:
        """An anonymous pull token from the realm in ``WWW-Authenticate: Bearer ...``."""
        scheme, _, params = challenge.headers.get("www-authenticate", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            return None
        answer = client.get(realm, params=fields)
        if answer.status_code != 200:
            return None
        try:
            body = answer.json()
        except ValueError:
            return None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        return f"Bearer {token}" if isinstance(token, str) and token else None


def graphql_literal(value: Any, *, enum: bool = False) -> str:
    """A GraphQL input literal. JSON string escapes are valid GraphQL string escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return value if enum else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(graphql_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{k}: {graphql_literal(v, enum=k in RunPodAPI.ENUMS)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no GraphQL literal for {type(value).__name__}")


class RunPodAPI:
    """Every RunPod API call of a deploy, through the runpod SDK's GraphQL client.

    The SDK's ``create_template`` / ``create_endpoint`` cannot update, set an execution
    timeout or pick CPU instances, so the same ``saveTemplate`` / ``saveEndpoint``
    mutations are sent whole: without ``id`` they create, with ``id`` they update.
    """

    STATE_QUERY = (
        "query { myself { podTemplates { id name imageName } "
        "endpoints { id name templateId networkVolumeId } } }"
    )
    ENUMS = frozenset({"flashBootType"})

    def __init__(self, api_key: str, transport: Callable[[str], dict[str, Any]] | None = None):
        self._api_key = api_key
        self._transport = transport or self._sdk

    def _sdk(self, query: str) -> dict[str, Any]:
        import runpod
        from runpod.api import graphql

        runpod.api_key = self._api_key  # the SDK reads its key from the module
        return graphql.run_graphql_query(query)

    def state(self) -> dict[str, list[dict[str, Any]]]:
        mine = self._transport(self.STATE_QUERY)["data"]["myself"]
        return {
            "templates": mine.get("podTemplates") or [],
            "endpoints": mine.get("endpoints") or [],
        }

    def save_template(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        query = (
            f"mutation {{ saveTemplate(input: {graphql_literal(dict(fields))}) "
            "{ id name imageName } }"
        )
        return dict(self._transport(query)["data"]["saveTemplate"])

    def save_endpoint(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        query = (
            f"mutation {{ saveEndpoint(input: {graphql_literal(dict(fields))}) "
            "{ id name templateId workersMin workersMax idleTimeout } }"
        )
        return dict(self._transport(query)["data"]["saveEndpoint"])


# --- execution -------------------------------------------------------------------------
def _named(items: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    # Endpoints made by hand with FlashBoot used to carry a "-fb" suffix.
    return next((i for i in items if str(i.get("name", "")).removesuffix("-fb") == name), None)


def _show(command: Sequence[str]) -> str:
    return shlex.join(command)


def execute_modal(plan: dict[str, Any], options: Options, shell: Shell) -> int:
    modal = ["modal"] if shell.which("modal") else [sys.executable, "-m", "modal"]
    for name, entry in plan["endpoints"].items():
        argv = entry["steps"][0]["run"]
        err.print(f"[bold]{name}[/]: {escape(_show(argv))}")
        code, output = shell.run([*modal, *argv[1:]], options.root)
        if code:
            err.print(f"[bold red]error:[/] modal deploy of {name} failed (exit {code})")
            return 1
        urls = MODAL_URL.findall(output)
        url = urls[-1] if urls else entry["url"]
        print(f"{name}: {url}")
        print(entry["curl"].replace(entry["url"], url))
        if "invoke" in entry:
            print(f"{name}: or start one run from this machine with:")
            print(entry["invoke"])
    return 0


def _volumes(
    plan: dict[str, Any], options: Options, state: Mapping[str, list[dict[str, Any]]]
) -> tuple[dict[str, str | None], list[str]]:
    """Each endpoint's network volume (given, else the one it has now) and the refusals."""
    volumes: dict[str, str | None] = {}
    problems = []
    for name, entry in plan["endpoints"].items():
        current = _named(state["endpoints"], entry["name"])
        volumes[name] = options.network_volume or (current or {}).get("networkVolumeId") or None
        if entry["needs_volume"] and not volumes[name]:
            problems.append(
                f"{name}: no network volume, so trained models and checkpoints would vanish "
                "with the worker: pass --network-volume <id> (or set FNB_RUNPOD_NETWORK_VOLUME)"
            )
    return volumes, problems


def _unknown_images(
    plan: dict[str, Any], docker: bool, shell: Shell, registry: Registry, root: Path
) -> list[str]:
    """Images that will not be pushed in this run and cannot be found in their registry."""
    problems = []
    for name, entry in plan["endpoints"].items():
        if entry["image_source"] == "vouched" or (entry["image_source"] == "build" and docker):
            continue
        image = entry["image"]
        answer = registry.check(image)
        if answer == "found":
            continue
        # docker manifest inspect needs no engine, only the CLI, and uses docker login's
        # credentials: it settles private repositories the anonymous check cannot.
        inspect = ["docker", "manifest", "inspect", image]
        if (
            answer != "missing"
            and shell.which("docker")
            and not shell.run(inspect, root, quiet=True)[0]
        ):
            continue
        problems.append(f"{name}: image {image} is not known to exist ({answer})")
    return problems


def _refuse_images(problems: list[str], plan: dict[str, Any], docker: bool) -> None:
    err.print(f"[bold red]error:[/] {escape('; '.join(problems))}")
    err.print(
        "Nothing was published. Do one of: run deploy where a Docker engine answers (it builds "
        "and pushes the images); push them yourself with the commands below, then deploy again "
        "(the registry is checked); pass --image NAME=REF for an image already pushed; or pass "
        "--image-exists when the registry cannot be checked from here (a private registry "
        "without docker login) and you know the tags are there."
    )
    if not docker:
        for entry in plan["endpoints"].values():
            for step in entry["steps"]:
                if "run" in step:
                    print(_show(step["run"]))


def execute_runpod(
    plan: dict[str, Any], options: Options, shell: Shell, api: RunPodAPI, registry: Registry
) -> int:
    try:
        state = api.state()  # a read: it publishes nothing
    except Exception as exc:  # the SDK raises its own errors, requests' and KeyError alike
        err.print(f"[bold red]error:[/] RunPod API: {escape(str(exc))}")
        return 1
    volumes, problems = _volumes(plan, options, state)
    if problems:
        err.print(f"[bold red]error:[/] {escape('; '.join(problems))}")
        return 2
    commands = [s["run"] for e in plan["endpoints"].values() for s in e["steps"] if "run" in s]
    docker = bool(commands) and shell.which("docker") is not None
    docker = docker and shell.run(["docker", "info"], options.root, quiet=True)[0] == 0
    if problems := _unknown_images(plan, docker, shell, registry, options.root):
        _refuse_images(problems, plan, docker)
        return 2
    for argv in commands if docker else []:
        err.print(f"[bold]$[/] {escape(_show(argv))}")
        code, _ = shell.run(argv, options.root)
        if code:
            err.print(f"[bold red]error:[/] {escape(_show(argv))} failed (exit {code})")
            return 1
    if not all(volumes.values()):
        err.print(
            "[yellow]No network volume for "
            + ", ".join(n for n, v in volumes.items() if not v)
            + ": those workers serve only models baked into the image.[/]"
        )
    try:
        for name, entry in plan["endpoints"].items():
            steps = {s["api"]: s for s in entry["steps"] if "api" in s}
            fields = dict(steps["saveTemplate"]["input"])
            if found := _named(state["templates"], entry["name"]):
                fields["id"] = found["id"]
            template = api.save_template(fields)
            fields = dict(steps["saveEndpoint"]["input"], templateId=template["id"])
            if volumes[name]:  # given, or the endpoint's own: an update never drops it
                fields["networkVolumeId"] = volumes[name]
            if found := _named(state["endpoints"], entry["name"]):
                fields["id"] = found["id"]
            saved = api.save_endpoint(fields)
            verb = "updated" if "id" in fields else "created"
            err.print(f"[bold]{name}[/]: {verb} RunPod endpoint {escape(saved['id'])}")
            url = entry["url"].replace("<endpoint-id>", saved["id"])
            print(f"{name}: {url}")
            print(entry["curl"].replace(entry["url"], url))
    except Exception as exc:  # the SDK raises its own errors, requests' and KeyError alike
        err.print(f"[bold red]error:[/] RunPod API: {escape(str(exc))}")
        return 1
    return 0


# --- command line ----------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="deploy.py", description="Publish deploy/endpoints.toml to Modal or RunPod."
    )
    parser.add_argument("--target", required=True, choices=["modal", "runpod"])
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="endpoint(s); repeat or a,b"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan as JSON only")
    parser.add_argument("--registry", help="image registry/user for RunPod (env FNB_REGISTRY)")
    parser.add_argument("--tag", help="image and Modal deployment tag (default: git short sha)")
    parser.add_argument("--env", dest="modal_env", help="Modal environment")
    parser.add_argument(
        "--network-volume", help="RunPod network volume id (env FNB_RUNPOD_NETWORK_VOLUME)"
    )
    parser.add_argument("--registry-auth", help="RunPod registry credential id for a private image")
    parser.add_argument("--allow-warm", action="store_true", help="allow min workers above 0")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="[NAME=]REF",
        help="RunPod: a prebuilt image for endpoint NAME (no build; its registry is checked); "
        "REF alone when one endpoint is deployed",
    )
    parser.add_argument(
        "--image-exists",
        action="store_true",
        help="RunPod: every image tag is already pushed; build nothing, check nothing",
    )
    parser.add_argument(
        "--public",
        action="store_true",
        help="Modal: publish web endpoints without FNB_MODAL_SECRET or FNB_MODAL_PROXY_AUTH",
    )
    parser.add_argument("--root", type=Path, default=REPO, help="repository root")
    parser.add_argument("--config", type=Path, help="declaration (default: ROOT/deploy/...)")
    args = parser.parse_args(argv)
    only = dict.fromkeys(n.strip() for group in args.only for n in group.split(",") if n.strip())
    root = args.root.resolve()
    images = []
    for value in args.image:
        name, sep, ref = value.rpartition("=")
        if not sep:
            if len(only) != 1:
                parser.error("--image REF needs one --only endpoint; else --image NAME=REF")
            name = next(iter(only))
        if not ref:
            parser.error(f"--image {value!r}: no image reference")
        images.append((name, ref))
    try:  # read as functions/images.py reads it, so the plan shows what the apps will do
        proxy_auth = TypeAdapter(bool).validate_python(environ.get("FNB_MODAL_PROXY_AUTH") or False)
    except ValidationError:
        parser.error(f"FNB_MODAL_PROXY_AUTH={environ['FNB_MODAL_PROXY_AUTH']!r} is not a boolean")
    return Options(
        target=args.target,
        only=tuple(only),
        dry_run=args.dry_run,
        registry=(args.registry or environ.get("FNB_REGISTRY") or "").rstrip("/") or None,
        tag=args.tag or git_tag(root),
        modal_env=args.modal_env,
        network_volume=args.network_volume or environ.get("FNB_RUNPOD_NETWORK_VOLUME") or None,
        registry_auth=args.registry_auth,
        allow_warm=args.allow_warm,
        image_exists=args.image_exists,
        images=tuple(images),
        modal_secret=environ.get("FNB_MODAL_SECRET", ""),
        modal_proxy_auth=proxy_auth,
        public=args.public,
        root=root,
        config=(args.config or root / "deploy" / "endpoints.toml").resolve(),
    )


def preflight(
    options: Options,
    environ: Mapping[str, str],
    shell: Shell,
    api_given: bool,
    selected: Sequence[Endpoint],
) -> None:
    """Credentials and tools a real run needs; raises before anything is published."""
    if options.target == "modal":
        if not modal_token_found(environ):
            raise DeployError(
                "no Modal token: run `modal token new` or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
            )
        if not shell.which("modal") and importlib.util.find_spec("modal") is None:
            raise DeployError("the modal client is not installed: pip install -e '.[modal]'")
        return
    if not environ.get("RUNPOD_API_KEY"):
        raise DeployError("no RunPod API key: set RUNPOD_API_KEY (RunPod console > Settings)")
    named = dict(options.images)  # a prebuilt image names its own registry
    if not options.registry and any(e.name not in named for e in selected):
        raise DeployError("no image registry: pass --registry docker.io/<user> or set FNB_REGISTRY")
    if not api_given and importlib.util.find_spec("runpod") is None:
        raise DeployError("the runpod SDK is not installed: pip install -e '.[runpod]'")


def main(
    argv: Sequence[str] | None = None,
    *,
    shell: Shell | None = None,
    runpod_api: RunPodAPI | None = None,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the deploy; returns the exit status (0 done, 1 publishing failed, 2 refused)."""
    environ = os.environ if environ is None else environ
    shell = shell or Shell()
    try:
        options = parse_args(argv, environ)
    except SystemExit as exc:  # argparse has printed the usage error
        return int(exc.code or 0)
    try:
        selected = select(load_endpoints(options.config), options.only)
        problems = check(options.target, selected, options)
        if problems:
            raise DeployError("; ".join(problems))
        plan = build_plan(options.target, selected, options)
        if options.dry_run:
            print(json.dumps(plan, indent=2))
            err.print(f"dry run: {len(selected)} endpoint(s) planned, nothing published")
            return 0
        preflight(options, environ, shell, runpod_api is not None, selected)
    except (DeployError, FnbError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    if options.target == "modal":
        return execute_modal(plan, options, shell)
    api = runpod_api or RunPodAPI(environ["RUNPOD_API_KEY"])
    return execute_runpod(plan, options, shell, api, registry or Registry())


if __name__ == "__main__":
    sys.exit(main())
