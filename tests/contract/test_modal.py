"""The Modal apps answer like the gateway, import offline, and take their settings from
deploy/endpoints.toml.

Modal's cloud is the boundary these tests cannot cross: apps are imported with no token and
an unreachable server, decorators are observed by a spy that calls through to Modal, and the
code runs in this process through ``.local()``, which runs the ``@modal.enter`` hooks first.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fnbundle.endpoints import get_endpoint
from fnbundle.store import Store

from tests.contract.cases import CASES, MODEL, Case, check_body, normalize

pytestmark = [
    pytest.mark.contract,
    # .local() says the Volume is not mounted here: the tests point FNB_STORE elsewhere.
    pytest.mark.filterwarnings("ignore:.*executing locally.*:UserWarning"),
]

REPO = Path(__file__).resolve().parents[2]
APP_MODULES = sorted(p.stem for p in (REPO / "functions").glob("*.py") if p.stem != "__init__")
SHARED_MODULES = {"images", "serving", "training"}  # what the apps import; no app of their own
HEAVY = ("torch", "transformers", "onnxruntime", "tokenizers", "onnx", "matplotlib")
GOOD = next(case for case in CASES if case.status == 200).payload


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment minus Modal credentials, with a Modal server nobody answers at."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "FNB_MODAL_"))}
    env["MODAL_CONFIG_PATH"] = str(tmp_path / "no-modal.toml")  # no profile, no token
    env["MODAL_SERVER_URL"] = "http://127.0.0.1:9"  # any call to Modal would fail here
    return {**env, **extra}


def run_python(code: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- importing -------------------------------------------------------------------------
def test_every_app_module_is_checked():
    assert {"images", "classify", "train_classifier"} <= set(APP_MODULES)


@pytest.mark.parametrize("module", APP_MODULES)
def test_app_module_imports_offline_without_heavy_libraries(module, tmp_path):
    code = (
        "import json, sys\n"
        f"import functions.{module} as m\n"
        f"print(json.dumps({{'heavy': [h for h in {HEAVY!r} if h in sys.modules],"
        " 'app': type(getattr(m, 'app', None)).__name__}))\n"
    )
    seen = run_python(code, offline_env(tmp_path))
    assert seen["heavy"] == []
    if module not in SHARED_MODULES:
        assert seen["app"] == "App"


@pytest.mark.parametrize(
    ("module", "options"),
    [
        ("classify", ["--text", "--model"]),
        ("train_classifier", ["--data", "--name", "--base", "--epochs", "--learning-rate"]),
    ],
)
def test_modal_run_reads_the_entrypoint_offline(module, options, tmp_path):
    """What `modal run functions/<module>.py ...` parses (the CLI's script mode), no token."""
    done = subprocess.run(
        [sys.executable, "-m", "modal", "run", f"functions/{module}.py", "--help"],
        cwd=REPO,
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for option in options:
        assert option in done.stdout


# --- decorator settings ------------------------------------------------------------------
SPY = """
import json
import modal
import functions.images as images

seen = {}


def spy(owner, name):
    original = getattr(owner, name)

    def record(*args, **kwargs):
        seen.setdefault(name, []).append(kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, record)


for owner, name in [(modal.App, "cls"), (modal.App, "function"), (modal, "concurrent"), (modal, "asgi_app")]:
    spy(owner, name)

import functions.MODULE


def plain(v):
    for name in ("cpu_image", "gpu_image", "volume"):
        if v is getattr(images, name):
            return name
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


print(json.dumps({name: [plain(kw) for kw in calls] for name, calls in seen.items()}))
"""


def decorators(module: str, env: dict[str, str]) -> dict:
    return run_python(SPY.replace("MODULE", module), env)


def test_classify_decorators_come_from_endpoints_toml(tmp_path):
    spec = get_endpoint("classify").modal
    seen = decorators("classify", offline_env(tmp_path))
    assert seen["cls"] == [
        {
            "image": "cpu_image",
            "volumes": {"/vol": "volume"},
            "secrets": [],
            "cpu": spec.cpu,
            "memory": spec.memory_mib,
            "min_containers": spec.min_containers,
            "max_containers": spec.max_containers,
            "buffer_containers": spec.buffer_containers,
            "scaledown_window": spec.scaledown_window_s,
            "timeout": spec.timeout_s,
            "retries": spec.retries,
            "enable_memory_snapshot": spec.enable_memory_snapshot,
        }
    ]
    assert seen["concurrent"] == [
        {"max_inputs": spec.max_inputs, "target_inputs": spec.target_inputs}
    ]
    assert seen["asgi_app"] == [{"requires_proxy_auth": False}]


def test_classify_deploy_options_add_the_key_secret_and_proxy_auth(tmp_path):
    env = offline_env(tmp_path, FNB_MODAL_SECRET="fnbundle-api-keys", FNB_MODAL_PROXY_AUTH="1")
    seen = decorators("classify", env)
    [secret] = seen["cls"][0]["secrets"]
    assert "fnbundle-api-keys" in secret
    assert seen["asgi_app"] == [{"requires_proxy_auth": True}]


def test_training_decorators_come_from_endpoints_toml(tmp_path):
    spec = get_endpoint("train_classifier").modal
    seen = decorators("train_classifier", offline_env(tmp_path))
    assert "function" not in seen  # no raw training function: every run is a job
    train, web = seen["cls"]  # TrainJobs, JobsApi
    assert train["image"] == "gpu_image" and train["volumes"] == {"/vol": "volume"}
    assert (train["gpu"], train["cpu"], train["memory"]) == (spec.gpu, spec.cpu, spec.memory_mib)
    assert (train["max_containers"], train["scaledown_window"]) == (
        spec.max_containers,
        spec.scaledown_window_s,
    )
    # Modal restarts a preempted input by itself; a retry would rerun a timed-out job.
    assert (train["timeout"], train["retries"]) == (spec.timeout_s, 0)
    # The jobs API's web requests (event streams) last up to the declared web timeout, not
    # Modal's default of 300 s.
    assert spec.web_timeout_s and web["timeout"] == spec.web_timeout_s


# --- the classify contract ---------------------------------------------------------------
@pytest.fixture
def classifier(store_env):
    from functions.classify import Classifier

    return Classifier()


@pytest.fixture
def modal_web(classifier):
    """The class's web endpoint: ``.local()`` runs the enter hooks and returns the app."""
    with TestClient(classifier.web.local()) as client:
        yield client


def test_a_container_is_ready_from_its_first_request(classifier, monkeypatch):
    """The models loaded in the enter hook: the app does not load them again, and the
    first probe already answers ready (a second preload reset readiness to loading)."""
    from fnbundle.runtime.host import ModelHost

    app = classifier.web.local()

    async def again(self):
        raise AssertionError("the app preloaded the container's models again")

    monkeypatch.setattr(ModelHost, "preload_async", again)
    with TestClient(app) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {MODEL: "ready"}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_modal_method_answers_like_the_gateway(case: Case, gateway, classifier):
    response = gateway.post("/v1/classify", json=case.payload)
    assert response.status_code == case.status, response.text
    check_body(case, response.json())

    body = classifier.classify.local(case.payload)

    check_body(case, body)
    assert normalize(body) == normalize(response.json())


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_modal_web_endpoint_answers_like_the_gateway(case: Case, gateway, modal_web):
    expected = gateway.post("/v1/classify", json=case.payload)

    response = modal_web.post("/v1/classify", json=case.payload)

    assert response.status_code == expected.status_code == case.status
    assert normalize(response.json()) == normalize(expected.json())


def test_modal_web_endpoint_guards_like_the_gateway(modal_web, gateway):
    for client in (modal_web, gateway):
        bad_json = client.post(
            "/v1/classify", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_json"
        too_big = client.post("/v1/classify", json={"model": MODEL, "texts": ["x" * 2_000_000]})
        assert too_big.status_code == 413
    ready = modal_web.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {MODEL: "ready"}
    names = [m["name"] for m in modal_web.get("/v1/models").json()["data"]]
    assert names == [MODEL]


def test_modal_web_endpoint_takes_the_bearer_key_from_its_secret(store_env, monkeypatch):
    from functions.classify import Classifier

    monkeypatch.setenv("FNB_API_KEYS", "key-from-the-modal-secret")  # what the Secret injects
    with TestClient(Classifier().web.local()) as client:
        refused = client.post("/v1/classify", json=GOOD)
        wrong = client.post("/v1/classify", json=GOOD, headers={"Authorization": "Bearer nope"})
        ok = client.post(
            "/v1/classify", json=GOOD, headers={"Authorization": "Bearer key-from-the-modal-secret"}
        )
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"]["type"] == "unauthorized"
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == len(GOOD["texts"])


def test_modal_method_preloads_the_endpoint_model_unless_told(store_env, monkeypatch):
    from functions.serving import container_settings

    endpoint = get_endpoint("classify")
    assert container_settings(endpoint).preload == [MODEL]  # FNB_PRELOAD wins
    monkeypatch.delenv("FNB_PRELOAD")
    assert container_settings(endpoint).preload == [endpoint.model]


class FakeVolume:
    """A Modal Volume as one container sees it: ``reload`` shows what others committed."""

    def __init__(self) -> None:
        self.reloads: list[float] = []  # monotonic seconds of each reload
        self.committed_elsewhere: list[Callable[[], Any]] = []  # seen from the next reload on

    def reload(self) -> None:
        self.reloads.append(time.monotonic())
        while self.committed_elsewhere:
            self.committed_elsewhere.pop(0)()


def test_a_warm_container_serves_a_model_published_after_it_started(
    tiny_trained, tmp_path, monkeypatch
):
    import modal

    import functions.classify as fn
    import functions.serving as serving

    published, _result = tiny_trained
    store = tmp_path / "store"
    monkeypatch.setenv("FNB_STORE", str(store))  # empty when the container starts
    monkeypatch.setenv("FNB_PRELOAD", MODEL)
    monkeypatch.delenv("FNB_API_KEYS", raising=False)
    volume = FakeVolume()
    monkeypatch.setattr(serving, "volume", volume)  # Modal's cloud: the Volume and where we run
    monkeypatch.setattr(modal, "is_local", lambda: False)
    request = {"model": MODEL, "texts": ["Lovely and well made."]}

    with TestClient(fn.Classifier().web.local()) as client:
        assert volume.reloads  # at start
        # A training container publishes the model and commits the Volume.
        volume.committed_elsewhere.append(
            lambda: shutil.copytree(published.store_root, store, dirs_exist_ok=True)
        )
        deadline = time.monotonic() + 4 * serving.RELOAD_ON_MISS_EVERY_S
        while (served := client.post("/v1/classify", json=request)).status_code == 404:
            assert time.monotonic() < deadline, "the container never reloaded the Volume"
            time.sleep(0.2)
        assert served.status_code == 200, served.text
        assert served.json()["model"].startswith(f"{MODEL}-")
        unknown = [
            client.post("/v1/classify", json={**request, "model": "nobody"}) for _ in range(20)
        ]
        assert [r.status_code for r in unknown] == [404] * 20
    # A stream of misses does not hammer the Volume: the reloads after the one at start
    # (the preload's miss, the polling, the unknown names) stay the window apart.
    gaps = [b - a for a, b in itertools.pairwise(volume.reloads[1:])]
    assert len(volume.reloads) >= 3
    assert all(gap >= serving.RELOAD_ON_MISS_EVERY_S for gap in gaps), gaps


# --- training ------------------------------------------------------------------------------
@pytest.fixture
def train_env(tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store; datasets resolve under data/ (the first root), as on the Volume."""
    store = tmp_path / "store"
    monkeypatch.setenv("FNB_STORE", str(store))
    monkeypatch.setenv("FNB_DATA_ROOTS", f"{REPO / 'data'},{tiny_base.parent}")
    return store


class FakeUpload:
    """``volume.batch_upload()``: files land in the test's datasets folder."""

    def __init__(self, datasets: Path):
        self.datasets = datasets

    def __enter__(self) -> FakeUpload:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def put_file(self, local: Path, remote: str) -> None:
        self.datasets.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, self.datasets / Path(remote).name)


def test_modal_run_submits_a_job_follows_it_and_publishes(
    train_env, tiny_base, tmp_path, monkeypatch, capsys
):
    """``modal run functions/train_classifier.py ...``: the entrypoint, with Modal's cloud
    (the Volume upload, spawn, the Dict) faked; the job runs through ``train_job.local``."""
    import threading

    import fnbundle.jobs.modal_backend as backend

    import functions.train_classifier as fn
    import functions.training as training
    from functions.classify import Classifier

    datasets = tmp_path / "datasets"
    monkeypatch.setenv("FNB_DATA_ROOTS", f"{datasets},{tiny_base.parent}")
    monkeypatch.setenv("FNB_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setattr(training, "WATCH_POLL_S", 0.2)
    state: dict[str, Any] = {}
    runs: list[threading.Thread] = []

    def spawn(job_id: str, submit: dict[str, Any]) -> str:
        run = threading.Thread(target=fn.TrainJobs().train_job.local, args=(job_id, submit))
        runs.append(run)
        run.start()
        return f"fc-{len(runs)}"

    monkeypatch.setattr(fn, "job_state", state)
    monkeypatch.setattr(fn, "spawn_job", spawn)
    monkeypatch.setattr(fn.volume, "batch_upload", lambda force: FakeUpload(datasets))
    monkeypatch.setattr(
        backend, "call_state", lambda call: "pending" if runs[0].is_alive() else "done"
    )

    fn.main(
        data=str(REPO / "data" / "reviews.csv"),
        name="modal-tiny",
        base=str(tiny_base),
        epochs=1,
        learning_rate=3e-3,
    )

    out = capsys.readouterr().out
    job_id = re.search(r"job (job-[0-9]{14}-[0-9a-f]{8}) submitted", out).group(1)
    assert "modal run --detach" in out and f"fnbundle jobs watch {job_id}" in out
    assert out.rstrip().endswith(f"job {job_id} succeeded")
    assert state[f"call:{job_id}"] == "fc-1"  # the deployed JobsApi can check the call
    assert len(runs) == 1
    model_id = state[f"job:{job_id}"]["model_id"]
    assert Store(train_env).resolve_id("modal-tiny") == model_id
    monkeypatch.setenv("FNB_PRELOAD", "modal-tiny")
    body = Classifier().classify.local({"model": "modal-tiny", "texts": ["Great value."]})
    assert body["model"] == model_id


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"name": "Not A Slug"}, "--name:"),
        ({"name": "x", "epochs": 0}, "--epochs:"),
        ({"name": "x", "data": "no-such-file.csv"}, "no-such-file.csv: no such file"),
    ],
)
def test_modal_run_refuses_bad_arguments_before_uploading(args, words, monkeypatch):
    import functions.train_classifier as fn

    def no_upload(force: bool) -> None:
        raise AssertionError("uploaded a dataset for a refused run")

    monkeypatch.setattr(fn.volume, "batch_upload", no_upload)
    with pytest.raises(SystemExit) as refused:
        fn.main(**{"data": str(REPO / "data" / "reviews.csv"), **args})
    assert words in str(refused.value)
