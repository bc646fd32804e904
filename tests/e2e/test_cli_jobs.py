"""`fnbundle jobs` as a user types it, against a real gateway that wants an API key."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, REVIEWS, free_port
from tests.e2e.conftest import FNBUNDLE, fnb_env, gateway

pytestmark = pytest.mark.e2e

KEY = "cli-s3cret-long-enough-key"
JOB_ID = re.compile(r"job-[0-9]{14}-[0-9a-f]{8}")


@pytest.fixture(scope="module")
def keyed_gateway(tiny_base, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("jobs-cli")
    with gateway(
        root / "store",
        FNB_DATA_ROOTS=f"{REPO},{tiny_base.parent}",
        FNB_JOBS_DIR=str(root / "jobs"),
        FNB_API_KEYS=KEY,
    ) as url:
        yield url, root


def jobs(*args: str, url: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`fnbundle jobs ...` with the gateway's address and key in the environment."""
    return subprocess.run(
        [*FNBUNDLE, "jobs", *args],
        env=fnb_env(Path("/nonexistent-store"), **{"FNB_URL": url, "FNB_API_KEY": KEY, **env}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit_args(tiny_base: Path, name: str, *extra: str) -> list[str]:
    return [
        "submit",
        "classifier",
        "--data",
        str(REVIEWS.relative_to(REPO)),  # a relative path: sent as an absolute one
        "--name",
        name,
        "--base",
        str(tiny_base),
        "--epochs",
        "1",
        "--learning-rate",
        "0.001",
        "--train-embeddings",
        "--no-onnx",
        *extra,
    ]


def test_submit_watch_then_status_list_and_cancel(keyed_gateway, tiny_base):
    url, _ = keyed_gateway
    run = jobs(*submit_args(tiny_base, "cli-job", "--watch", "--idempotency-key", "k1"), url=url)
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = JOB_ID.search(run.stdout).group(0)
    assert "running" in run.stdout and f"succeeded {job_id}: published cli-job-" in run.stdout
    assert re.search(r"\d+/\d+ loss \d\.\d{4}", run.stdout)  # the progress bar's last frame

    status = jobs("status", job_id, "--json", url=url)
    job = json.loads(status.stdout)
    assert status.returncode == 0 and job["status"] == "succeeded"
    assert job["model_id"].startswith("cli-job-") and job["params"]["data"] == str(REVIEWS)
    plain = jobs("status", job_id, url=url)
    assert "succeeded" in plain.stdout and job["model_id"] in plain.stdout

    listed = jobs("list", "--status", "succeeded", "--json", url=url)
    assert job_id in [j["id"] for j in json.loads(listed.stdout)]
    assert job_id not in jobs("list", "--status", "running,queued", url=url).stdout

    same = jobs(*submit_args(tiny_base, "cli-job", "--idempotency-key", "k1"), url=url)
    assert same.returncode == 0 and job_id in same.stdout  # the same job, not a new one

    replay = jobs("watch", job_id, url=url)  # a finished job replays and exits 0
    assert replay.returncode == 0 and "succeeded" in replay.stdout

    cancel = jobs("cancel", job_id, url=url)
    assert cancel.returncode == 1 and "already ended succeeded" in " ".join(cancel.stderr.split())


def test_cancelled_job_watch_exits_non_zero(keyed_gateway, tiny_base):
    url, _ = keyed_gateway
    submitted = jobs(*submit_args(tiny_base, "cli-cancel", "--json"), url=url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    cancel = jobs("cancel", job_id, url=url)
    assert cancel.returncode == 0 and job_id in cancel.stdout
    watched = jobs("watch", job_id, url=url)
    assert watched.returncode == 1
    assert f"job {job_id} cancelled" in " ".join(watched.stderr.split())


def test_errors_are_one_clear_line(keyed_gateway, tiny_base):
    url, _ = keyed_gateway
    no_key = jobs("list", url=url, FNB_API_KEY="")
    assert no_key.returncode == 1 and "--api-key" in no_key.stderr

    bad = jobs(*submit_args(tiny_base, "cli-bad", "--batch-size", "0"), url=url)
    assert bad.returncode == 1 and "--batch-size:" in bad.stderr

    unknown = jobs("status", "job-20260101000000-0000abcd", url=url)
    assert unknown.returncode == 1 and "No job" in unknown.stderr

    for run in (no_key, bad, unknown):
        assert "Traceback" not in run.stderr


def test_unreachable_gateway(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (("list",), ("status", "job-20260101000000-0000abcd"), ("watch", "x")):
        run = jobs(*args, url=url, timeout=60)
        assert run.returncode == 1
        message = " ".join(run.stderr.split())
        assert f"cannot reach the gateway at {url}" in message and "Traceback" not in message
