"""GET /v1/tasks (what the playground builds its forms from), POST /v1/jobs/estimate (what
it shows before a job starts) and GET / (the page, with nothing fetched from elsewhere).

The real registry and the real job manager over a temporary database (no worker starts).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.api.tasks import ui_of
from fnbundle.jobs.manager import JobManager
from fnbundle.playground import STATIC_DIR
from fnbundle.settings import Settings
from fnbundle.tasks import REGISTRY
from fnbundle.tasks.base import Route
from pydantic import BaseModel

from tests.conftest import REPO, REVIEWS

pytestmark = pytest.mark.unit

KEY = "s3cret-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PARAMS = {"data": str(REVIEWS), "name": "tickets", "epochs": 1}


@pytest.fixture
def manager(tmp_path) -> JobManager:
    settings = Settings(store=tmp_path / "store", jobs_dir=tmp_path / "jobs", data_roots=[REPO])
    return JobManager(settings, max_running=0)


@pytest.fixture
def client(tmp_path, manager):
    settings = manager.settings.model_copy(update={"api_keys": [KEY]})
    with TestClient(create_app(settings, job_manager=manager)) as c:
        yield c


# --- GET /v1/tasks ---------------------------------------------------------------------
def test_tasks_need_the_key(client):
    assert client.get("/v1/tasks").status_code == 401
    assert (
        client.get(
            "/v1/tasks", headers={"Authorization": "Bearer wrong-key-0123456789"}
        ).status_code
        == 401
    )


def test_every_registered_task_is_listed_with_its_schemas(client):
    answer = client.get("/v1/tasks", headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    serving = {t["slug"]: t for t in body["serving"]}
    training = {t["slug"]: t for t in body["training"]}
    assert set(serving) == set(REGISTRY.serving) and set(training) == set(REGISTRY.training)
    assert body["jobs"] is True
    for slug, task in REGISTRY.serving.items():
        listed = serving[slug]
        assert listed["error_style"] == task.error_style and listed["example"] == task.example
        assert [r["path"] for r in listed["routes"]] == [r.path for r in task.routes()]
        for route, shown in zip(task.routes(), listed["routes"], strict=True):
            assert shown["request_schema"] == route.request_model.model_json_schema()
            assert shown["streams"] == route.streams
            # The example is a request its first route accepts.
        task.routes()[0].request_model.model_validate(task.example)
    for slug, task in REGISTRY.training.items():
        listed = training[slug]
        assert listed["serves"] == task.serves and listed["serves"] in serving
        assert listed["hardware"] == task.hardware
        assert listed["params_schema"] == task.params_model.model_json_schema()


def test_the_renderers_the_registry_gets(client):
    """Each shipped route gets the renderer its shape calls for, naming the field it fills."""
    body = client.get("/v1/tasks", headers=AUTH).json()
    ui = {r["path"]: r["ui"] for t in body["serving"] for r in t["routes"]}
    assert ui["/v1/classify"] == {"kind": "texts", "field": "texts", "vectors": None}
    assert ui["/v1/embeddings"] == {
        "kind": "similarity",
        "field": "input",
        "vectors": "data.embedding",
    }
    assert ui["/v1/chat/completions"] == {"kind": "chat", "field": "messages", "vectors": None}
    assert ui["/v1/predict"] == {"kind": "rows", "field": "rows", "vectors": None}


class Message(BaseModel):
    role: str
    content: str


class Reply(BaseModel):
    text: str


class Summarise(BaseModel):
    model: str
    documents: list[str]
    ratio: float = 0.2


class Converse(BaseModel):
    model: str
    turns: list[Message]


class Score(BaseModel):
    model: str
    pairs: list[list[str]] | None = None
    threshold: float = 0.5


def route(request: type[BaseModel], **kw) -> Route:
    return Route("/v1/x", request, Reply, "x", **kw)


def test_a_new_tasks_renderer_comes_from_its_schema_not_its_name():
    assert ui_of(route(Summarise)).model_dump() == {
        "kind": "texts",
        "field": "documents",
        "vectors": None,
    }
    assert ui_of(route(Converse)).kind == "chat" and ui_of(route(Converse)).field == "turns"
    assert ui_of(route(Score)).kind == "form"  # nothing it recognises: the generic form


def test_a_declared_hint_is_used_where_the_shape_fits_it():
    assert ui_of(route(Summarise, ui="form")).kind == "form"
    assert ui_of(route(Converse, ui="texts")).kind == "form"  # no required list of strings


# --- POST /v1/jobs/estimate --------------------------------------------------------------
def test_the_estimate_is_what_the_submit_records_and_queues_nothing(client, manager):
    body = {"task": "train_classifier", "params": PARAMS, "budget_usd": 50}
    answer = client.post("/v1/jobs/estimate", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    estimate = answer.json()
    assert manager.list() == []  # nothing queued
    assert estimate["task"] == "train_classifier" and estimate["hardware"] == "gpu"
    assert estimate["budget_usd"] == 50
    submitted = client.post("/v1/jobs", json=body, headers=AUTH).json()
    job = manager.get(submitted["id"])
    assert estimate["estimate"] == job.estimate and estimate["gpu"] == job.gpu
    assert estimate["within_budget"] is (job.estimate["usd"] <= 50)


def test_an_estimate_over_the_budget_says_so(client):
    body = {"task": "train_classifier", "params": PARAMS, "budget_usd": 1e-9}
    answer = client.post("/v1/jobs/estimate", json=body, headers=AUTH).json()
    assert answer["estimate"]["usd"] > 1e-9 and answer["within_budget"] is False
    plain = client.post("/v1/jobs/estimate", json={**body, "budget_usd": None}, headers=AUTH)
    assert plain.json()["within_budget"] is None


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"task": "train_classifier", "params": {**PARAMS, "epochs": 0}}, 422, "params.epochs"),
        ({"task": "train_classifier", "params": {"name": "x"}}, 422, "params.data"),
        ({"task": "train_nothing", "params": PARAMS}, 422, "task"),
    ],
)
def test_an_estimate_refuses_what_the_submit_refuses(client, manager, body, status, field):
    answer = client.post("/v1/jobs/estimate", json=body, headers=AUTH)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == field
    assert client.post("/v1/jobs", json=body, headers=AUTH).status_code == status
    assert manager.list() == []


def test_the_estimate_needs_the_key(client):
    body = {"task": "train_classifier", "params": PARAMS}
    assert client.post("/v1/jobs/estimate", json=body).status_code == 401


# --- GET / ---------------------------------------------------------------------------------
def test_the_page_and_its_assets_are_served_without_a_key_and_fetch_nothing_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "playground/app.js" in assets and "playground/style.css" in assets
    for name in sorted(p.name for p in STATIC_DIR.iterdir()):
        served = client.get(f"/playground/{name}")
        assert served.status_code == 200, name
        text = served.text
        # Every import is a file of this folder; no URL outside it (no CDN, no font host).
        for imported in re.findall(r'from "\./([^"]+)"', text):
            assert (STATIC_DIR / imported).is_file(), (name, imported)
        assert not re.search(r"""(?:src|href|import|url)\s*[=(]?\s*["']?https?://""", text), name
    for escape in ("%2e%2e/__init__.py", "..%2f__init__.py"):  # the package's code: not served
        assert client.get(f"/playground/{escape}").status_code == 404


def test_the_page_ships_in_the_package():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["fnbundle.playground"]
    shipped = {p.name for pattern in patterns for p in STATIC_DIR.parent.glob(pattern)}
    assert shipped == {p.name for p in STATIC_DIR.iterdir()} and "index.html" in shipped
    assert all(Path(STATIC_DIR / name).is_file() for name in shipped)  # no folders to miss


def test_an_image_without_the_pages_files_still_serves_and_says_why(tmp_path, monkeypatch):
    """Modal's add_local_python_source ships .py files only unless told otherwise."""
    import fnbundle.playground as playground

    monkeypatch.setattr(playground, "STATIC_DIR", tmp_path / "missing")
    with TestClient(create_app(Settings(store=tmp_path / "store"), jobs=False)) as bare:
        page = bare.get("/")
        assert page.status_code == 404 and "no playground" in page.json()["error"]["message"]
        assert bare.get("/playground/app.js").status_code == 404
        assert bare.get("/healthz").status_code == 200
        assert bare.get("/v1/tasks").json()["jobs"] is False  # a serving-only deployment
