"""Publish the endpoints of ``deploy/endpoints.toml`` to Modal or RunPod.

    python deploy/deploy.py --target modal|runpod [--only classify] [--dry-run]

Modal: ``modal deploy functions/<task>.py`` per app (the apps read their scaling from the
declaration). RunPod: build and push ``handlers/Dockerfile`` per handler (printed, not run,
when no Docker engine answers), then create or update a serverless template and endpoint
of the same name through the runpod SDK's GraphQL client, and print the URL and a curl line.

Key rule: the plan is data first. :func:`build_plan` is a pure function; ``--dry-run``
prints its JSON (every setting, command and API mutation) and touches nothing, and a real
run executes exactly that plan. Every check (declaration ranges, GPU names, endpoint names,
files, warm workers, tokens, registry) runs before the first command: a failed check
publishes nothing and exits 2. A failure while publishing exits 1.
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

from fnbundle.endpoints import Endpoint, load_endpoints
from fnbundle.errors import FnbError
from rich.console import Console
from rich.markup import escape

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = "handlers/Dockerfile"
RUNPOD_API_BASE = "https://api.runpod.ai/v2"
RUNPOD_VOLUME_MOUNT = "/runpod-volume"  # where serverless workers see a network volume
MODAL_URL = re.compile(r"https://[a-z0-9-]+--[a-z0-9-]+\.modal\.run")
GIT_TIMEOUT_S = 10  # seconds

# Tasks that answer one request synchronously; the others are jobs (train_*).
SERVING_TASKS = frozenset({"classify", "embed", "generate"})
GATEWAY_ROUTES = {"classify": "/v1/classify", "embed": "/v1/embeddings"}
EXAMPLE_TEXTS = ["Arrived early and works great.", "Cold food, rude staff."]

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
    skip_build: bool = False
    root: Path = REPO
    config: Path = field(default_factory=lambda: REPO / "deploy" / "endpoints.toml")


# --- the plan (pure) -------------------------------------------------------------------
def example_input(endpoint: Endpoint, target: str) -> dict[str, Any]:
    """The JSON body a client sends: the gateway's body, also RunPod's ``input``."""
    if endpoint.task == "classify":
        return {"model": endpoint.model or "sentiment", "texts": EXAMPLE_TEXTS}
    if endpoint.task == "train_classifier":
        # `modal run` uploads a local file; a RunPod worker reads datasets from the volume.
        data = (
            "data/reviews.csv"
            if target == "modal"
            else f"{RUNPOD_VOLUME_MOUNT}/datasets/reviews.csv"
        )
        return {"data": data, "name": "sentiment"}
    return {"model": endpoint.model} if endpoint.model else {}


def runpod_name(endpoint: Endpoint) -> str:
    """One name for the RunPod template and endpoint, so a re-deploy finds and updates them."""
    return "fnbundle-" + endpoint.name.replace("_", "-")


def image_ref(endpoint: Endpoint, options: Options) -> str:
    return f"{options.registry or '<registry>'}/{endpoint.runpod.image}:{options.tag}"


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
        "env": [{"key": k, "value": v} for k, v in sorted(endpoint.runpod.env.items())],
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
    else:
        fields["instanceIds"] = list(spec.cpu_flavor_ids)
    if options.network_volume:
        fields["networkVolumeId"] = options.network_volume
    return fields


def _gateway_curl(url: str, endpoint: Endpoint) -> str:
    route = GATEWAY_ROUTES.get(endpoint.task, f"/v1/{endpoint.task}")
    body = shlex.quote(json.dumps(example_input(endpoint, "modal")))
    return (
        f'curl -s {url}{route} -H "Authorization: Bearer $FNB_API_KEY" '
        f"-H 'Content-Type: application/json' -d {body}"
    )


def _runpod_curl(url: str, endpoint: Endpoint) -> str:
    body = shlex.quote(json.dumps({"input": example_input(endpoint, "runpod")}))
    return (
        f'curl -s {url} -H "authorization: $RUNPOD_API_KEY" '
        f"-H 'content-type: application/json' -d {body}"
    )


def _modal_entry(endpoint: Endpoint, options: Options) -> dict[str, Any]:
    spec = endpoint.modal
    argv = ["modal", "deploy"]
    if options.modal_env:
        argv += ["--env", options.modal_env]
    argv += ["--tag", options.tag, spec.file]
    entry: dict[str, Any] = {
        "task": endpoint.task,
        "app": spec.app,
        "scaling": {
            "min": spec.min_containers,
            "max": spec.max_containers,
            "buffer": spec.buffer_containers,
            "scaledown_window_s": spec.scaledown_window_s,
            "concurrency": spec.max_inputs,
            "gpu": spec.gpu,
            "cpu": spec.cpu,
            "memory_snapshot": spec.enable_memory_snapshot,
        },
        "settings": spec.model_dump(),
        "steps": [{"run": argv}],
    }
    if endpoint.task in SERVING_TASKS:
        workspace = "<workspace>" + (f"-{options.modal_env}" if options.modal_env else "")
        url = f"https://{workspace}--{spec.app}-<class>-<method>.modal.run"
        entry["url"] = url  # modal deploy prints the exact one
        entry["curl"] = _gateway_curl(url, endpoint)
    else:
        flags = " ".join(
            f"--{k} {shlex.quote(str(v))}" for k, v in example_input(endpoint, "modal").items()
        )
        entry["invoke"] = f"modal run {spec.file} {flags}".strip()
    return entry


def _runpod_entry(endpoint: Endpoint, options: Options) -> dict[str, Any]:
    spec = endpoint.runpod
    image = image_ref(endpoint, options)
    steps: list[dict[str, Any]] = []
    if not options.skip_build:
        handler = Path(spec.handler).stem
        build = ["docker", "build", "--platform", "linux/amd64", "-f", DOCKERFILE]
        build += ["--build-arg", f"HANDLER={handler}", "-t", image, "."]
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
        "scaling": {
            "min": spec.workers_min,
            "max": spec.workers_max,
            "scaledown_window_s": spec.idle_timeout_s,
            "concurrency": spec.concurrency,  # the handler's concurrency_modifier reads it
            "gpu": spec.gpu_ids or None,
            "cpu": spec.cpu_flavor_ids or None,
            "flashboot": spec.flashboot,
        },
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
        plan["network_volume"] = options.network_volume
        plan["reads"] = [RunPodAPI.STATE_QUERY]
        plan["upsert"] = (
            "a template or endpoint with the same name is updated in place "
            "(its id goes into the input); otherwise it is created"
        )
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
    if target == "runpod" and not options.skip_build and not (options.root / DOCKERFILE).is_file():
        problems.append(f"{DOCKERFILE} does not exist")
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
        "query { myself { podTemplates { id name imageName } endpoints { id name templateId } } }"
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
        if "curl" in entry:
            url = urls[-1] if urls else entry["url"]
            print(f"{name}: {url}")
            print(entry["curl"].replace(entry["url"], url))
        else:
            print(f"{name}: deployed app {entry['app']}; start a run with:")
            print(entry["invoke"])
    return 0


def execute_runpod(plan: dict[str, Any], options: Options, shell: Shell, api: RunPodAPI) -> int:
    commands = [s["run"] for e in plan["endpoints"].values() for s in e["steps"] if "run" in s]
    docker = bool(commands) and shell.which("docker") is not None
    docker = docker and shell.run(["docker", "info"], options.root, quiet=True)[0] == 0
    if commands and not docker:
        err.print("[yellow]No Docker engine answers: run these, then the endpoints can pull:[/]")
        for argv in commands:
            print(_show(argv))
    for argv in commands if docker else []:
        err.print(f"[bold]$[/] {escape(_show(argv))}")
        code, _ = shell.run(argv, options.root)
        if code:
            err.print(f"[bold red]error:[/] {escape(_show(argv))} failed (exit {code})")
            return 1
    if not options.network_volume:
        err.print(
            "[yellow]No --network-volume: workers mount no store; they serve only models "
            "baked into the image.[/]"
        )
    try:
        state = api.state()
        for name, entry in plan["endpoints"].items():
            steps = {s["api"]: s for s in entry["steps"] if "api" in s}
            fields = dict(steps["saveTemplate"]["input"])
            if found := _named(state["templates"], entry["name"]):
                fields["id"] = found["id"]
            template = api.save_template(fields)
            fields = dict(steps["saveEndpoint"]["input"], templateId=template["id"])
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
    parser.add_argument("--skip-build", action="store_true", help="RunPod: image already pushed")
    parser.add_argument("--root", type=Path, default=REPO, help="repository root")
    parser.add_argument("--config", type=Path, help="declaration (default: ROOT/deploy/...)")
    args = parser.parse_args(argv)
    only = dict.fromkeys(n.strip() for group in args.only for n in group.split(",") if n.strip())
    root = args.root.resolve()
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
        skip_build=args.skip_build,
        root=root,
        config=(args.config or root / "deploy" / "endpoints.toml").resolve(),
    )


def preflight(options: Options, environ: Mapping[str, str], shell: Shell, api_given: bool) -> None:
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
    if not options.registry:
        raise DeployError("no image registry: pass --registry docker.io/<user> or set FNB_REGISTRY")
    if not api_given and importlib.util.find_spec("runpod") is None:
        raise DeployError("the runpod SDK is not installed: pip install -e '.[runpod]'")


def main(
    argv: Sequence[str] | None = None,
    *,
    shell: Shell | None = None,
    runpod_api: RunPodAPI | None = None,
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
        preflight(options, environ, shell, runpod_api is not None)
    except (DeployError, FnbError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    if options.target == "modal":
        return execute_modal(plan, options, shell)
    api = runpod_api or RunPodAPI(environ["RUNPOD_API_KEY"])
    return execute_runpod(plan, options, shell, api)


if __name__ == "__main__":
    sys.exit(main())
