"""Publish the endpoints of ``deploy/endpoints.toml`` to Modal or RunPod.

    python deploy/deploy.py --target modal|runpod [--only classify] [--dry-run]

Modal: ``modal deploy functions/<task>.py`` per app (the apps read their scaling from the
declaration). RunPod: build and push ``handlers/Dockerfile`` per handler, then create or
update a serverless template and endpoint of the same name through the runpod SDK's GraphQL
client, and print the URL and a curl line that carries the auth the endpoint really needs.

This file is the command line only; the work lives beside it: ``plan.py`` (the plan and its
checks), ``registry.py`` (does an image tag exist), ``runpod_api.py`` (RunPod's GraphQL API),
``local.py`` (commands, git, Modal's token) and ``execute.py`` (carrying the plan out).

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

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import the deploy package from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # root, not this file's folder

import argparse
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence

from fnbundle.endpoints import Endpoint, load_endpoints
from fnbundle.errors import FnbError
from pydantic import TypeAdapter, ValidationError
from rich.markup import escape

from deploy.execute import execute_modal, execute_runpod
from deploy.local import Shell, err, git_tag, modal_token_found
from deploy.plan import REPO, DeployError, Options, build_plan, check, select
from deploy.registry import Registry
from deploy.runpod_api import RunPodAPI


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
