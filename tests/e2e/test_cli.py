"""The real `fnbundle` command line, as a user types it."""

import json
import subprocess

import pytest

from tests.conftest import REPO, REVIEWS
from tests.contract.conftest import write_small_reviews
from tests.e2e.conftest import FNBUNDLE, fnb_env

pytestmark = pytest.mark.e2e


def fnb(*args: str, store, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FNBUNDLE, *args],
        env=fnb_env(store, **env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_train_predict_and_list(tiny_base, tmp_path):
    store = tmp_path / "store"
    data = write_small_reviews(tmp_path / "data" / "small.csv")  # a few steps: the CLI is tested
    roots = f"{tmp_path / 'data'},{tiny_base.parent}"
    trained = fnb(
        "train",
        "classifier",
        "--data",
        str(data),
        "--name",
        "cli-model",
        "--base",
        str(tiny_base),
        "--epochs",
        "1",
        "--learning-rate",
        "0.003",
        "--label-smoothing",
        "0",
        "--device",
        "cpu",
        "--json",
        store=store,
        FNB_DATA_ROOTS=roots,
    )
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout[trained.stdout.index("{") :])
    assert result["model_id"].startswith("cli-model-") and result["metrics"]["eval_examples"] > 0
    manifest = json.loads((store / "models" / result["model_id"] / "manifest.json").read_text())
    assert manifest["training"]["label_smoothing"] == 0
    assert manifest["training"]["device"] == "cpu"

    listed = fnb("models", "list", "--json", store=store)
    assert [m["id"] for m in json.loads(listed.stdout)] == [result["model_id"]]

    predicted = fnb(
        "predict",
        "classify",
        "--model",
        "cli-model",
        "--json",
        "Great value.",
        "Awful.",
        store=store,
    )
    assert predicted.returncode == 0, predicted.stderr
    body = json.loads(predicted.stdout)
    assert body["model"] == result["model_id"] and len(body["predictions"]) == 2


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("text,label\nonly one,pos\nanother,pos\n", "1 distinct label"),
        ("body,label\nx,pos\ny,neg\n", "no 'text' column"),
        ("text,label\nfine,pos\n,neg\n", "empty 'text'"),
    ],
)
def test_bad_datasets_fail_with_one_clear_line(tmp_path, rows, message):
    data = tmp_path / "data.csv"
    data.write_text(rows)
    run = fnb(
        "train",
        "classifier",
        "--data",
        str(data),
        "--name",
        "x",
        store=tmp_path / "s",
        FNB_DATA_ROOTS=str(tmp_path),
        timeout=120,
    )
    assert run.returncode == 1
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "s" / "models").exists()


def test_dataset_outside_the_roots_is_refused(tmp_path):
    run = fnb(
        "train",
        "classifier",
        "--data",
        "/etc/passwd",
        "--name",
        "x",
        store=tmp_path / "s",
        timeout=120,
    )
    assert run.returncode == 1 and "outside the allowed roots" in run.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [("--name", "Bad Name"), ("--device", "tpu"), ("--label-smoothing", "0.7")],
)
def test_invalid_option_names_the_option(tmp_path, option, value):
    args = {"--name": "ok", option: value}
    run = fnb(
        "train",
        "classifier",
        "--data",
        str(REVIEWS),
        *[part for pair in args.items() for part in pair],
        store=tmp_path,
        timeout=120,
    )
    assert run.returncode == 2 and f"error: {option}:" in run.stderr


def test_unknown_model_in_predict(tmp_path):
    run = fnb("predict", "classify", "--model", "nope", "hello", store=tmp_path, timeout=120)
    assert run.returncode == 1 and "not found" in run.stderr


def test_no_keys_means_loopback_only(tmp_path):
    run = fnb("serve", "--host", "0.0.0.0", "--port", "8765", store=tmp_path, timeout=60)
    assert run.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in " ".join(run.stderr.split())


def test_data_inspect_prints_the_schema_and_refuses_what_cannot_train(tmp_path):
    shown = fnb("data", "inspect", "data/churn.csv", "--json", store=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["target"]["column"] == "churned" and body["problem"] is None
    assert {c["name"]: c["kind"] for c in body["columns"]}["signup_date"] == "date"
    table = fnb("data", "inspect", "data/churn.csv", store=tmp_path, timeout=120)
    assert table.returncode == 0 and "churned (classification)" in table.stdout
    wrong = fnb("data", "inspect", "data/churn.csv", "--target", "customer_id", store=tmp_path)
    said = " ".join(wrong.stderr.split())
    assert wrong.returncode == 1 and "cannot be the target: it is identifier" in said
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n")
    ragged = fnb("data", "inspect", str(tmp_path / "ragged.csv"), store=tmp_path)
    assert ragged.returncode == 1 and "line 3 has 3 fields" in " ".join(ragged.stderr.split())
    (tmp_path / "ids.csv").write_text("id,y\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20)))
    ids = fnb("data", "inspect", str(tmp_path / "ids.csv"), store=tmp_path)
    assert ids.returncode == 1 and "No usable feature" in " ".join(ids.stderr.split())
    assert "y (classification)" in ids.stdout  # the schema is still shown
    assert "Traceback" not in ragged.stderr + wrong.stderr
