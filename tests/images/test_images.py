"""Each cloud image, installed for real: a fresh virtualenv gets exactly the packages that
image installs, plus the project without dependencies, and serves a request from inside it.

The dev virtualenv holds every package, so an image that lacks one passes every other test
and fails in the cloud at import. Here each image's list is read through the same code the
image definition uses: Modal's from ``functions.images.image_layers``, RunPod's by replaying
handlers/Dockerfile's own steps (tests/images/dockerfile.py) with the fresh virtualenv's pip.
Then, in that virtualenv: every Modal app module imports and answers through ``.local()``
(classify; ``GET /v1/jobs``, a submit and its one-epoch training job); the RunPod classify
worker answers a job with ``--test_input`` and the training worker one through its dev
server's ``/runsync`` (the SDK's ``--test_input`` does not run a streaming handler). The tiny
model and base are built in the dev virtualenv; the images only serve or fine-tune them.

What differs from the cloud, and why: torch is this machine's CPU build of the locked version
(the CUDA runtime the GPU images add is gigabytes and needs a GPU); Modal's runtime provides
the ``modal`` package in its containers, so the locked ``modal`` is added for the Modal images;
the Modal and RunPod clouds are not contacted. uv (the dev virtualenv's, ``uv pip install
--python``) installs the same fully pinned lists, in the same order, that the images give pip:
the same packages at the same versions, from pip's configured sources (its index, extra
indexes and find-links, and its certificate bundle, passed to uv, which reads no pip.conf; like
pip, the best match across them), linked from uv's cache instead of unzipped anew (pip unpacks
torch every time), without byte-compiling at install (a module is compiled, and cached, when a
process first imports it). ``pip check`` is still pip's. The whole check takes
a few minutes.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from functions.images import IMAGE_LOCKS, LOCKS, PIP_OPTIONS, image_layers
from tests.conftest import REPO, free_port
from tests.contract.cases import MODEL
from tests.contract.conftest import write_small_reviews
from tests.contract.test_modal import offline_env
from tests.images.dockerfile import copy_into, replay

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # seconds: five virtualenvs, three of them with torch
]

INSTALL_TIMEOUT_S = 900  # one install: torch from a local wheel on 2 busy cores
UV = Path(sys.executable).with_name("uv")  # the dev virtualenv's (requirements/dev.txt)
RUN_TIMEOUT_S = 300  # one probe: imports, model load, a one-epoch tiny training
CUDA_RUNTIME = re.compile(r"^(nvidia-|cuda-|triton==)")
TEXTS = ["Great value, works perfectly.", "Broke after one day."]
# A tabular job small enough for the image check, with an MLP: torch's export in the image.
TABLE = {"data": str(REPO / "data" / "churn.csv"), "name": "image-table", "cv_folds": 2,
         "models": ["logistic_regression", "mlp_classifier"], "epochs": 2}  # fmt: skip


def run(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{shlex.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


# Not passed on: what points at the dev virtualenv, and PYTHONDONTWRITEBYTECODE (where the
# machine sets it): an image's pip byte-compiles what it installs, uv here does not, so
# without it every process in an image's virtualenv compiled torch and transformers from
# source again (7 s of CPU each on these cores); now the first one writes the cache.
NOT_PASSED_ON = frozenset({"VIRTUAL_ENV", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE"})


def fresh_env(**extra: str) -> dict[str, str]:
    """This process's environment minus anything that points at the dev virtualenv or
    keeps an image's processes from caching their bytecode."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_PASSED_ON}
    return {**env, **extra}


def new_venv(path: Path) -> Path:
    """A fresh virtualenv at ``path``; returns its python."""
    run([sys.executable, "-m", "venv", str(path)], timeout=INSTALL_TIMEOUT_S)
    return path / "bin" / "python"


@functools.cache
def pip_config() -> tuple[tuple[str, str], ...]:
    """(option, value) of pip's configuration (``pip config list``: files and ``PIP_*``)."""
    listed = run([sys.executable, "-m", "pip", "config", "list"], timeout=60, env=fresh_env())
    found = []
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        for word in value.strip("'\"").split():
            found.append((key.rpartition(".")[2], word))
    return tuple(dict.fromkeys(found))  # the files and PIP_* may say the same


def pip_sources() -> list[str]:
    """pip's package sources as uv options, so uv installs from where pip would."""
    options = []
    for option, value in pip_config():
        if option in {"index-url", "extra-index-url", "find-links"}:
            options += [f"--{option}", value]
    return [*options, "--index-strategy", "unsafe-best-match"]  # pip's: best across all


def uv_env() -> dict[str, str]:
    """The environment for uv: pip's certificate bundle (``cert``) as uv's, if it has one."""
    certs = [value for option, value in pip_config() if option == "cert"]
    return fresh_env(**({"SSL_CERT_FILE": certs[-1]} if certs else {}))


def pip_install(python: Path, *args: str) -> None:
    """``pip install args`` into ``python``'s virtualenv, done by uv (see the docstring)."""
    run(
        [str(UV), "pip", "install", "-q", "--python", str(python), *pip_sources(), *args],
        timeout=INSTALL_TIMEOUT_S,
        env=uv_env(),
    )


def locked(name: str, lock: str = "dev.txt") -> str:
    """``name==version`` as ``requirements/<lock>`` pins it."""
    (pin,) = re.findall(rf"^({re.escape(name)}==\S+)", (LOCKS / lock).read_text(), re.M)
    return pin


# --- shared pieces, built once -----------------------------------------------------------
@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as a wheel, built from what the worker images' build context holds."""
    source = tmp_path_factory.mktemp("project-source")
    for name in ("pyproject.toml", "README.md", "shared"):
        copy_into(name, source / name if name == "shared" else source)
    out = tmp_path_factory.mktemp("project-wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        timeout=INSTALL_TIMEOUT_S,
        env=fresh_env(),
    )
    (wheel,) = out.glob("fnbundle-*.whl")
    return wheel


@pytest.fixture(scope="session")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``venv(key, install)``: one virtualenv per distinct package list ``key``, filled by
    ``install(python)`` the first time it is asked for."""
    made: dict[str, Path] = {}

    def venv(key: str, install: Callable[[Path], None]) -> Path:
        if key not in made:
            python = new_venv(tmp_path_factory.mktemp("venv"))
            install(python)
            made[key] = python
        return made[key]

    return venv


@pytest.fixture(scope="session")
def train_inputs(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> dict[str, str]:
    """A small dataset and the tiny base, inside data roots a worker allows."""
    data = write_small_reviews(tmp_path_factory.mktemp("datasets") / "small.csv")
    return {
        "FNB_DATA_ROOTS": f"{data.parent},{tiny_base.parent}",
        "data": str(data),
        "base": str(tiny_base),
    }


def train_params(inputs: dict[str, str], name: str) -> dict:
    return {
        "data": inputs["data"],
        "name": name,
        "base": inputs["base"],
        "epochs": 1,
        "batch_size": 8,
        "learning_rate": 3e-3,
    }


def place_declaration(python: Path, declaration: Path) -> None:
    """An image carries deploy/endpoints.toml at /root/deploy/ (Modal) or /app/deploy/
    (RunPod), where ``fnbundle.endpoints`` looks in a container; outside one, the copy goes
    where the installed package looks first."""
    where = probe(
        python,
        "import json, fnbundle.endpoints as e; print(json.dumps(str(e.DEFAULT_PATH)))",
        fresh_env(),
    )
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    Path(where).write_bytes(declaration.read_bytes())


# --- Modal ---------------------------------------------------------------------------------
def modal_packages(image: str) -> list[list[str]]:
    """What ``image`` installs, layer by layer, as this machine can install it: of a first
    layer that later ones build on (the GPU image's torch layer), only what they also hold;
    what is left out must be the CUDA runtime, and torch is this machine's CPU build."""
    layers = image_layers(image)
    if len(layers) == 1:
        return layers
    later = {line for layer in layers[1:] for line in layer}
    left_out = [line for line in layers[0] if line not in later]
    assert left_out and all(CUDA_RUNTIME.match(line) for line in left_out), left_out
    return [[line for line in layers[0] if line in later], *layers[1:]]


def modal_venv(venvs, image: str, wheel: Path) -> Path:
    layers = modal_packages(image)

    def install(python: Path) -> None:
        for packages in layers:
            pip_install(python, *shlex.split(PIP_OPTIONS), *packages)
        # Modal's runtime brings its own client: the locked one, with its locked dependencies.
        pip_install(python, locked("modal"), "-c", str(LOCKS / "dev.txt"))
        # The image's packages agree among themselves; that they hold everything the project
        # imports is what serving from them shows (a container imports it from source).
        run([str(python), "-m", "pip", "check"], timeout=120, env=fresh_env())
        pip_install(python, "--no-deps", str(wheel))
        place_declaration(python, REPO / "deploy" / "endpoints.toml")

    return venvs(json.dumps(layers), install)


def probe(python: Path, code: str, env: dict[str, str], cwd: Path = REPO) -> dict:
    """Run ``code`` with the image's python; return the JSON object it prints last."""
    done = run([str(python), "-c", code], timeout=RUN_TIMEOUT_S, cwd=cwd, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


IMPORT_APPS = """
import importlib, json, pathlib, warnings
warnings.simplefilter("ignore")  # .local() says the Volume is not mounted here
apps = sorted(p.stem for p in pathlib.Path("functions").glob("*.py") if p.stem != "__init__")
for name in apps:
    importlib.import_module(f"functions.{name}")
"""

SERVE_CLASSIFY = (
    IMPORT_APPS
    + """
from fastapi.testclient import TestClient
from functions.classify import Classifier
body = Classifier().classify.local({"model": MODEL, "texts": TEXTS})
with TestClient(Classifier().web.local()) as client:
    ready = client.get("/readyz")
print(json.dumps({"apps": apps, "body": body, "ready": ready.status_code}))
"""
)

SERVE_JOBS_AND_TRAIN = (
    IMPORT_APPS
    + """
from fastapi.testclient import TestClient
import functions.train_classifier as fn
fn.job_state = {}  # the modal.Dict lives in Modal's cloud
spawned = []  # Modal's spawn: recorded here, then run in this process
fn.spawn_job = lambda job_id, submit: spawned.append((job_id, submit)) or "fc-1"
with TestClient(fn.JobsApi().web.local()) as client:
    listed = client.get("/v1/jobs")
    submitted = client.post("/v1/jobs", json={"task": "train_classifier", "params": PARAMS})
job = fn.TrainJobs().train_job.local(*spawned[0])
# The CPU function (functions/train_tabular.py) runs in the same image: a tabular job.
import functions.train_tabular as tab
tab.job_state = fn.job_state
cpu = []
fn.spawn_cpu_job = lambda job_id, submit: cpu.append((job_id, submit)) or "fc-2"
with TestClient(fn.JobsApi().web.local()) as client:
    table = client.post("/v1/jobs", json={"task": "train_tabular", "params": TABLE})
tabular = tab.TabularJobs().train_job.local(*cpu[0])
print(json.dumps({
    "apps": apps,
    "listed": [listed.status_code, listed.json()],
    "submitted": [submitted.status_code, submitted.json()],
    "job": job,
    "table": [table.status_code, table.json()],
    "tabular": tabular,
}))
"""
)


def test_modal_cpu_image_serves_classify(venvs, project_wheel, tiny_trained, tmp_path):
    assert IMAGE_LOCKS["cpu_image"]
    python = modal_venv(venvs, "cpu_image", project_wheel)
    settings, _result = tiny_trained
    env = offline_env(
        tmp_path, FNB_STORE=str(settings.store_root), FNB_PRELOAD=MODEL, FNB_DATA_ROOTS=str(REPO)
    )
    code = SERVE_CLASSIFY.replace("MODEL", repr(MODEL)).replace("TEXTS", repr(TEXTS))

    seen = probe(python, code, fresh_env(**env))

    assert {"classify", "images", "train_classifier"} <= set(seen["apps"])
    assert "error" not in seen["body"], seen["body"]
    assert seen["body"]["model"].startswith(f"{MODEL}-")
    assert [p["label"] in {"positive", "negative"} for p in seen["body"]["predictions"]] == [
        True,
        True,
    ]
    assert seen["ready"] == 200


def test_modal_gpu_image_serves_jobs_and_trains(venvs, project_wheel, train_inputs, tmp_path):
    python = modal_venv(venvs, "gpu_image", project_wheel)
    store = tmp_path / "store"
    env = offline_env(
        tmp_path,
        FNB_STORE=str(store),
        FNB_DATA_ROOTS=f"{train_inputs['FNB_DATA_ROOTS']},{REPO / 'data'}",
        FNB_JOBS_DIR=str(tmp_path / "jobs"),
    )
    params = train_params(train_inputs, "image-check")
    code = SERVE_JOBS_AND_TRAIN.replace("PARAMS", repr(params)).replace("TABLE", repr(TABLE))

    seen = probe(python, code, fresh_env(**env))

    assert {"classify", "images", "train_classifier"} <= set(seen["apps"])
    assert seen["listed"] == [200, {"jobs": []}], seen["listed"]
    assert seen["submitted"][0] == 202, seen["submitted"]
    assert seen["job"]["status"] == "succeeded", seen["job"]
    assert seen["table"][0] == 202, seen["table"]
    assert seen["tabular"]["status"] == "succeeded", seen["tabular"]
    assert len(list((store / "models").glob("*/model.onnx"))) == 2  # the classifier, the table


# --- RunPod --------------------------------------------------------------------------------
PIP_SHIM = """#!{python}
# pip for the replayed Dockerfile: `pip install` is uv's, into this virtualenv, from pip's
# configured sources and certificates instead of TORCH_INDEX (torch's CPU build), with uv's
# cache instead of --no-cache-dir; any other command (`pip check`) is pip's own.
import os, sys
args, rest = [], iter(sys.argv[1:])
for arg in rest:
    if arg == "--index-url":
        next(rest)
    elif arg != "--no-cache-dir":
        args.append(arg)
if args[:1] == ["install"]:
    uv = [{uv!r}, "pip", "install", "-q", "--python", sys.executable, *{sources!r}]
    os.environ.update({env!r})
    os.execv(uv[0], [*uv, *args[1:]])
os.execv(sys.executable, [sys.executable, "-m", "pip", *args])
"""


def runpod_worker(venvs, handler: str, tmp_path_factory) -> tuple[Path, Path]:
    """The worker image for ``handler`` as a virtualenv and its /app folder."""
    app = tmp_path_factory.mktemp(f"app-{handler}")

    def install(python: Path) -> None:
        shim_dir = python.parent.parent / "shim"
        shim_dir.mkdir()
        shim = shim_dir / "pip"
        cert = {k: v for k, v in uv_env().items() if k == "SSL_CERT_FILE"}
        shim.write_text(PIP_SHIM.format(python=python, uv=str(UV), sources=pip_sources(), env=cert))
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
        for step in replay(handler, app, shim_dir):
            assert step.returncode == 0, f"{step.args[-1]}\n{step.stdout}\n{step.stderr}"
        place_declaration(python, app / "deploy" / "endpoints.toml")

    lock = (LOCKS / f"runpod-{handler}.txt").read_text()
    python = venvs(lock, install)  # handlers with the same lock share one virtualenv
    if not (app / "handlers" / f"{handler}.py").is_file():  # installed for another handler
        replay(handler, app, python.parent, pip=False)
    return python, app


def run_test_input(python: Path, app: Path, handler: str, payload: dict, env: dict[str, str]):
    """Run ``handlers/<handler>.py --test_input`` the SDK's local way; return its job output."""
    done = subprocess.run(
        [str(python), f"handlers/{handler}.py", "--test_input", json.dumps({"input": payload})],
        cwd=app,
        env=fresh_env(PYTHONUNBUFFERED="1", **env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    for line in done.stdout.splitlines():
        if "| Job result: " in line:
            assert done.returncode == 0, done.stderr[-3000:]
            return ast.literal_eval(line.split("| Job result: ", 1)[1])["output"]
    raise AssertionError(f"no job result from the worker:\n{done.stdout}\n{done.stderr[-3000:]}")


def test_runpod_classify_worker_answers_a_job(venvs, tiny_trained, tmp_path_factory):
    python, app = runpod_worker(venvs, "classify", tmp_path_factory)
    settings, _result = tiny_trained
    env = {"FNB_STORE": str(settings.store_root), "FNB_PRELOAD": MODEL}

    output = run_test_input(python, app, "classify", {"model": MODEL, "texts": TEXTS}, env)

    assert "error" not in output, output
    assert output["model"].startswith(f"{MODEL}-")
    assert len(output["predictions"]) == len(TEXTS)


@contextmanager
def dev_server(python: Path, app: Path, handler: str, env: dict[str, str]) -> Iterator[str]:
    """The worker's RunPod dev server (``--rp_serve_api``) on a free 127.0.0.1 port, stopped
    on exit; yields its base URL. The SDK's ``--test_input`` runs no generator handler."""
    port = free_port()
    command = [str(python), f"handlers/{handler}.py", "--rp_serve_api"]
    command += ["--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    log_path = app / f"{handler}-server.log"
    with log_path.open("wb") as log:  # a file, not a pipe: a full pipe would stall it
        server = subprocess.Popen(
            command, cwd=app, env=fresh_env(**env), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                assert server.poll() is None, log_path.read_text(errors="replace")[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the dev server did not start"
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def test_runpod_training_worker_trains_and_publishes(venvs, train_inputs, tmp_path_factory):
    python, app = runpod_worker(venvs, "train_classifier", tmp_path_factory)
    store = tmp_path_factory.mktemp("runpod-store")
    env = {
        "FNB_STORE": str(store),
        "FNB_DATA_ROOTS": train_inputs["FNB_DATA_ROOTS"],
        "FNB_JOBS_DIR": str(tmp_path_factory.mktemp("runpod-jobs")),
    }
    job = {"task": "train_classifier", "params": train_params(train_inputs, "image-check")}
    payload = {"job": job, "job_id": "job-20260101000000-0000abcd"}  # as RunPodJobs sends it

    with dev_server(python, app, "train_classifier", env) as base:
        answer = httpx.post(f"{base}/runsync", json={"input": payload}, timeout=RUN_TIMEOUT_S)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "COMPLETED", body
    events = body["output"]
    assert [e["data"]["status"] for e in events if e["type"] == "state"] == [
        "running",
        "succeeded",
    ], events[-3:]
    model_id = events[-1]["data"]["model_id"]
    assert model_id.startswith("image-check-")
    assert (store / "models" / model_id / "model.onnx").is_file()


def test_runpod_tabular_worker_trains_and_publishes(venvs, tmp_path_factory):
    python, app = runpod_worker(venvs, "train_tabular", tmp_path_factory)
    store = tmp_path_factory.mktemp("runpod-tabular-store")
    env = {
        "FNB_STORE": str(store),
        "FNB_DATA_ROOTS": str(REPO / "data"),
        "FNB_JOBS_DIR": str(tmp_path_factory.mktemp("runpod-tabular-jobs")),
    }
    payload = {"job": {"task": "train_tabular", "params": TABLE},
               "job_id": "job-20260101000000-0000cafe"}  # fmt: skip

    with dev_server(python, app, "train_tabular", env) as base:
        answer = httpx.post(f"{base}/runsync", json={"input": payload}, timeout=RUN_TIMEOUT_S)

    assert answer.status_code == 200, answer.text
    events = answer.json()["output"]
    assert [e["data"]["status"] for e in events if e["type"] == "state"] == [
        "running",
        "succeeded",
    ], events[-3:]
    model_id = events[-1]["data"]["model_id"]
    assert (store / "models" / model_id / "model.onnx").is_file()


def test_runpod_lora_worker_fine_tunes_and_publishes_an_adapter(
    venvs, tiny_llm_base, tmp_path_factory
):
    """The finetune_lora worker's image (the training stack, PEFT, bitsandbytes): one epoch
    of LoRA on the tiny Llama over the shipped support chats, published as an adapter with
    its imported base."""
    python, app = runpod_worker(venvs, "finetune_lora", tmp_path_factory)
    store = tmp_path_factory.mktemp("runpod-lora-store")
    env = {
        "FNB_STORE": str(store),
        "FNB_DATA_ROOTS": f"{REPO / 'data'},{tiny_llm_base.parent}",
        "FNB_JOBS_DIR": str(tmp_path_factory.mktemp("runpod-lora-jobs")),
    }
    params = {
        "data": str(REPO / "data" / "support_chat.jsonl"),
        "base": str(tiny_llm_base),
        "name": "image-lora",
        "epochs": 1,
        "max_seq_length": 64,
    }
    payload = {"job": {"task": "finetune_lora", "params": params},
               "job_id": "job-20260101000000-0000f00d"}  # fmt: skip

    with dev_server(python, app, "finetune_lora", env) as base:
        answer = httpx.post(f"{base}/runsync", json={"input": payload}, timeout=RUN_TIMEOUT_S)

    assert answer.status_code == 200, answer.text
    events = answer.json()["output"]
    assert [e["data"]["status"] for e in events if e["type"] == "state"] == [
        "running",
        "succeeded",
    ], events[-3:]
    adapter = store / "models" / events[-1]["data"]["model_id"]
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["kind"] == "adapter" and (adapter / "adapter_model.safetensors").is_file()
    assert (store / "models" / manifest["base"]["id"] / "model.safetensors").is_file()
