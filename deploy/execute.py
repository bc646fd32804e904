"""Carry out a deploy plan: ``modal deploy`` per app, or RunPod builds, pushes and API saves.

Key rule: a real run executes exactly the plan :func:`plan.build_plan` made, and refuses before
its first command or mutation: a training endpoint with no network volume, or an image that
will not be pushed in this run and cannot be found in its registry, publishes nothing and
returns 2. A failure while publishing returns 1. The RunPod account is read once (a read
publishes nothing), and a template or endpoint of the same name is updated, never doubled.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from deploy.local import Shell, err
from deploy.plan import Options
from deploy.registry import Registry
from deploy.runpod_api import RunPodAPI

MODAL_URL = re.compile(r"https://[a-z0-9-]+--[a-z0-9-]+\.modal\.run")


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
