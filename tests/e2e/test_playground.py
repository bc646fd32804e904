"""The playground page in a real browser: Debian's chromium, driven by Playwright, against a
real `fnbundle serve` on 127.0.0.1 with an API key and the tiny classifier in its store.

What a web developer does on a first visit: connect (and read the 401 message when the key
is wrong), classify texts and read the same call as curl, drop the demo table, review its
schema, see the estimate, train a small model and watch its chart grow, try the new model
in the row editor, cancel another job from the jobs list; on a phone-sized screen too,
with no console error anywhere. With ``FNB_PLAYGROUND_SCREENSHOTS=<dir>`` the main screens
are saved there (docs/img/ holds the README's).
"""

from __future__ import annotations

import math
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fnbundle.store import Store

from tests.conftest import REPO
from tests.e2e.conftest import gateway, import_llm
from tests.unit.tiny_onnx import publish_tiny_embedder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a browser and a training job: ~60 s

KEY = "playground-test-key-0123456789"
JOB_WAIT_MS = 240_000  # a small tabular job on a busy 2-core machine, worker start included
UI_WAIT_MS = 30_000  # a call and its rendering on a busy machine
LOAD_WAIT_MS = 180_000  # the tiny Llama's first request: torch and the model load then
CHURN = REPO / "data" / "churn.csv"


def chromium_path() -> str:
    """Debian's chromium (Playwright's own download cannot reach its host here)."""
    path = os.environ.get("FNB_CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.fail("no chromium on PATH: `make browser` installs Debian's (or set FNB_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def site(
    tiny_trained, tiny_llm_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(url, tiny classifier id) of a gateway with a key, on a copy of the tiny store (the
    tests publish a tabular model into it) with a tiny embedder and the tiny Llama beside."""
    settings, result = tiny_trained
    store = tmp_path_factory.mktemp("playground") / "store"
    shutil.copytree(settings.store_root, store)
    publish_tiny_embedder(Store(store), "tiny-embed")
    import_llm(store, tiny_llm_base, "llm")
    # The ONNX models load at start; the Llama (torch) on its first request.
    preload = f"{result.model_id},tiny-embed"
    output: list[str] = []  # the gateway's log, written beside the store for a failed run
    try:
        with gateway(
            store, output, FNB_API_KEYS=KEY, FNB_JOBS_MAX_RUNNING="1", FNB_PRELOAD=preload
        ) as url:
            yield url, result.model_id
    finally:
        (store.parent / "gateway.log").write_text("".join(output))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox"]
        )
        yield launched
        launched.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def screenshot(page, name: str, part: str | None = None) -> None:
    """The page (or its ``part``, a selector) into $FNB_PLAYGROUND_SCREENSHOTS, if set."""
    folder = os.environ.get("FNB_PLAYGROUND_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = str(Path(folder) / f"playground-{name}.png")
        if part is None:
            page.screenshot(path=path, full_page=True)
        else:
            page.locator(part).screenshot(path=path)


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_WAIT_MS)
    page.console = Console(page)
    page.goto(site[0] + "/")
    yield page
    context.close()


def connect(page, key: str = KEY) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Connect").click()


def test_a_wrong_key_is_a_401_message_and_the_right_one_connects(page) -> None:
    status = page.locator("#connect-status")
    assert "Connect" in status.inner_text()  # a first visit calls nothing
    connect(page, "not-the-key-at-all-000")
    page.wait_for_function("document.body.dataset.connected === 'false'")
    assert "401" in status.inner_text() and "API key" in status.inner_text()
    connect(page)
    page.wait_for_function("document.body.dataset.connected === 'true'")
    assert "Connected" in status.inner_text()
    # The browser reports the refused call itself; nothing else went wrong.
    assert all("401" in e for e in page.console.errors), page.console.errors


def test_an_unreachable_endpoint_is_named(page) -> None:
    page.get_by_label("Endpoint URL").fill("http://127.0.0.1:9")  # the discard port: closed
    connect(page)
    page.wait_for_function("document.body.dataset.connected === 'false'")
    assert "Cannot reach http://127.0.0.1:9" in page.locator("#connect-status").inner_text()


def test_every_serving_route_gets_a_form_and_classify_answers(page, site) -> None:
    connect(page)
    page.wait_for_function("document.body.dataset.connected === 'true'")
    routes = page.locator("#try-route option").all_inner_texts()
    for path in ("/v1/classify", "/v1/embeddings", "/v1/chat/completions", "/v1/predict"):
        assert any(path in r for r in routes), routes
    page.locator("#try-route").select_option(label="classify: POST /v1/classify")
    page.locator("#try-model").select_option(site[1])
    page.locator("#try-texts").fill("Arrived early and works great.\nCold food, rude staff.")
    page.get_by_role("button", name="Run").click()
    answer = page.locator("#try-answer table")
    answer.wait_for()
    assert answer.locator("tbody tr").count() == 2
    assert page.locator("#try-latency").inner_text().endswith("ms")
    curl = page.locator("pre[data-snippet=curl]").inner_text()
    assert f"{site[0]}/v1/classify" in curl and "$FNB_API_KEY" in curl and KEY not in curl
    assert "Cold food, rude staff." in page.locator("pre[data-snippet=openai]").inner_text()
    screenshot(page, "try")
    assert page.console.errors == []


def pick_model(page, prefix: str) -> None:
    """Select the model whose option starts with ``prefix`` (its name, then its id)."""
    labels = page.locator("#try-model option").all_inner_texts()
    page.locator("#try-model").select_option(label=next(t for t in labels if t.startswith(prefix)))


def test_two_texts_similarity_is_the_cosine_of_their_embeddings(page, site) -> None:
    connect(page)
    page.wait_for_function("document.body.dataset.connected === 'true'")
    page.locator("#try-route").select_option(label="embed: POST /v1/embeddings")
    pick_model(page, "tiny-embed ")
    page.get_by_label("Text A").fill("good film")
    page.get_by_label("Text B").fill("the awful film")
    page.get_by_role("button", name="Compare").click()
    shown = float(page.locator("#try-cosine").inner_text().rsplit(" ", 1)[-1])
    vectors = httpx.post(
        f"{site[0]}/v1/embeddings",
        json={"model": "tiny-embed", "input": ["good film", "the awful film"]},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["data"]
    a, b = (v["embedding"] for v in vectors)
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    cosine = dot / (math.hypot(*a) * math.hypot(*b))
    assert shown == pytest.approx(cosine, abs=1e-3)
    assert "client.embeddings.create(" in page.locator("pre[data-snippet=openai]").inner_text()
    assert page.console.errors == []


def loaded(url: str, body: dict[str, object]) -> None:
    """Ask until the model answers: on a busy machine the tiny Llama's first load (torch
    included) outlasts the gateway's wait for a loading model, a 503 the page would show."""
    deadline = time.monotonic() + LOAD_WAIT_MS / 1000
    while True:
        answer = httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=90)
        if answer.status_code != 503 or time.monotonic() > deadline:
            break
    assert answer.status_code == 200, answer.text


def test_the_chat_box_streams_the_answer_as_it_arrives(page, site) -> None:
    hello = {"role": "user", "content": "Say hello."}
    loaded(f"{site[0]}/v1/chat/completions", {"model": "llm", "messages": [hello], "max_tokens": 1})
    connect(page)
    page.wait_for_function("document.body.dataset.connected === 'true'")
    page.locator("#try-route").select_option(label="generate: POST /v1/chat/completions")
    pick_model(page, "llm ")
    page.get_by_label("max_tokens").fill("24")
    # Count the reply's updates: a streamed answer grows in several steps.
    page.evaluate(
        """() => {
            window.replyUpdates = 0;
            new MutationObserver(() => window.replyUpdates++).observe(
                document.getElementById("chat-log"),
                { subtree: true, characterData: true, childList: true });
        }"""
    )
    page.get_by_label("Message").fill("Say hello.")
    page.get_by_role("button", name="Send").click()
    page.locator("#try-latency").wait_for(timeout=LOAD_WAIT_MS)
    page.wait_for_function("!document.querySelector('#chat-log [aria-busy]')")
    reply = page.locator("#chat-log .msg.assistant").inner_text()
    assert reply.strip() and page.evaluate("window.replyUpdates") > 3
    assert "first token after" in page.locator("#try-latency").inner_text()
    curl = page.locator("pre[data-snippet=curl]").inner_text()
    assert curl.startswith("curl -N") and '"stream":true' in curl
    assert page.console.errors == []


def drop_file(page, path: Path) -> None:
    """A real drop event on the drop zone, carrying the file."""
    transfer = page.evaluate_handle(
        """([name, text]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], name, { type: "text/csv" }));
            return dt;
        }""",
        [path.name, path.read_text()],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def prepare_job(page, model: str, **options: str) -> None:
    """Train tab: drop the churn table, pick ``model`` and ``options``, see the estimate."""
    page.get_by_role("button", name="Train").click()
    drop_file(page, CHURN)
    page.locator("#schema-table").wait_for()
    assert page.locator("#train-target").input_value() == "churned"  # the proposed target
    page.get_by_label("model", exact=True).select_option(model)
    if options:
        page.locator("#params-box details summary").click()
        for name, value in options.items():
            page.get_by_label(name, exact=True).fill(value)
    page.get_by_role("button", name="Estimate cost and time").click()
    page.locator("#estimate-figures").wait_for()


def test_train_the_demo_table_watch_it_and_try_the_model(page) -> None:
    connect(page)
    page.wait_for_function("document.body.dataset.connected === 'true'")
    prepare_job(page, "mlp_classifier", epochs="12", patience="12")
    estimate = page.locator("#estimate-figures").inner_text()
    assert "cpu" in estimate and "$" in estimate
    # A column left out changes the body: the shown estimate no longer holds.
    page.get_by_label("use feedback").uncheck()
    assert page.get_by_role("button", name="Start training").is_disabled()
    page.get_by_role("button", name="Estimate cost and time").click()
    page.locator("#estimate-figures").wait_for()
    screenshot(page, "train-estimate")
    page.get_by_role("button", name="Start training").click()
    chart = page.locator("#watch-chart")
    page.wait_for_function(
        "Number(document.getElementById('watch-chart').dataset.points) >= 2", timeout=JOB_WAIT_MS
    )
    seen = int(chart.get_attribute("data-points") or 0)
    page.wait_for_function(
        f"Number(document.getElementById('watch-chart').dataset.points) > {seen}",
        timeout=JOB_WAIT_MS,
    )  # the chart grows while the job runs
    assert page.locator("#watch-chart polyline[data-series=eval_loss]").count() == 1
    page.locator("#final-title").wait_for(timeout=JOB_WAIT_MS)
    assert page.locator("#final-title").inner_text() == "Job succeeded"
    assert page.locator("#watch-progress").evaluate("p => p.value") == 1
    picture = page.locator("#watch-final figure img").first
    picture.wait_for()
    assert picture.evaluate("img => img.complete && img.naturalWidth > 0")
    screenshot(page, "train-watch", "#watch")
    # The new model in the row editor, from its input schema.
    page.locator("#try-new-model").click()
    editor = page.locator("#row-editor")
    editor.wait_for()
    assert editor.get_by_label("plan").input_value() == "pro"  # the example row
    assert editor.get_by_label("feedback").count() == 0  # excluded from training
    page.get_by_role("button", name="Predict").click()
    page.locator("#try-answer table").wait_for()
    assert page.locator("#try-answer tbody tr").count() == 1
    screenshot(page, "predict")
    assert page.console.errors == []


def test_cancel_a_running_job_from_the_jobs_list(page) -> None:
    connect(page)
    page.wait_for_function("document.body.dataset.connected === 'true'")
    prepare_job(page, "mlp_classifier", epochs="2000", patience="1000")
    page.get_by_role("button", name="Start training").click()
    page.locator("#watch-id").wait_for()
    job_id = page.locator("#watch-id").inner_text()
    page.get_by_role("button", name="Jobs").click()
    row = page.locator(f"#jobs-table tr[data-job='{job_id}']")
    row.wait_for()
    row.get_by_role("button", name=f"Cancel {job_id}").click()
    page.locator(f"#jobs-table tr[data-job='{job_id}'][data-status=cancelled]").wait_for(
        timeout=JOB_WAIT_MS
    )  # the list refreshes itself
    screenshot(page, "jobs")
    assert page.console.errors == []


def test_a_classifier_downloads_for_transformers_js_from_the_models_list(page, site) -> None:
    connect(page)
    page.wait_for_function("document.body.dataset.connected === 'true'")
    page.get_by_role("button", name="Models").click()
    row = page.locator(f"#models-table tr[data-model='{site[1]}']")
    row.get_by_role("button", name="Export for the browser").click()
    assert f'"text-classification", "{site[1]}"' in page.locator("#export-box pre").inner_text()
    with page.expect_download(timeout=LOAD_WAIT_MS) as download:
        page.get_by_role("button", name=f"Download {site[1]} for Transformers.js").click()
    with zipfile.ZipFile(download.value.path()) as zipped:
        assert f"{site[1]}/onnx/model.onnx" in zipped.namelist()
    assert "Downloaded" in page.locator("#export-box [role=status]").inner_text()
    # Only a classifier (a model with labels) offers the download here.
    assert page.locator("#models-table tr[data-model^='tiny-embed']").count() == 1
    assert page.locator("#models-table tr[data-model^='tiny-embed'] button").all_inner_texts() == [
        "Try"
    ]
    assert page.console.errors == []


def test_a_phone_sized_screen_fits_and_works_by_keyboard(browser, site) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(UI_WAIT_MS)
    console = Console(page)
    page.goto(site[0] + "/")
    # Keyboard only: the URL field, the key, then Connect.
    page.get_by_label("Endpoint URL").focus()
    page.keyboard.press("Tab")
    page.keyboard.type(KEY)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Connect"
    page.keyboard.press("Enter")
    page.wait_for_function("document.body.dataset.connected === 'true'")
    page.locator("#try-route").select_option(label="classify: POST /v1/classify")
    page.locator("#try-texts").focus()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # Run, reached by Tab
    page.locator("#try-answer table").wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the phone"
    screenshot(page, "phone")
    assert console.errors == []
    context.close()
