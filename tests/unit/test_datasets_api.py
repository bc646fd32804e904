"""``/v1/datasets``: upload (raw body, form, a path in the data roots, an S3 URI), one
dataset per content, limits, the schema route, delete, and nothing left behind on failure."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.datasets import DatasetStore, datasets_root, resolve_data
from fnbundle.settings import MIB, Settings

from tests.conftest import free_port
from tests.tiny import REPO

pytestmark = pytest.mark.unit
CHURN = REPO / "data" / "churn.csv"
KEY = "datasets-key-0123456789"


def make_client(tmp_path, **overrides):
    settings = Settings(store=tmp_path / "store", data_roots=[REPO / "data"], **overrides)
    return TestClient(create_app(settings, jobs=False)), settings


@pytest.fixture
def client(tmp_path):
    c, _ = make_client(tmp_path, dataset_max_mib=1)
    with c:
        yield c


def leftovers(tmp_path) -> list[str]:
    incoming = tmp_path / "store" / "datasets" / ".incoming"
    return sorted(p.name for p in incoming.iterdir()) if incoming.exists() else []


def test_upload_read_schema_list_and_delete(client, tmp_path):
    body = CHURN.read_bytes()
    first = client.post(
        "/v1/datasets?name=churn.csv", content=body, headers={"Content-Type": "text/csv"}
    )
    assert first.status_code == 201, first.text
    info = first.json()
    assert info["id"].startswith("ds-") and len(info["id"]) == 19
    assert (info["name"], info["format"], info["rows"], info["bytes"]) == (
        "churn.csv",
        "csv",
        3000,
        len(body),
    )
    assert first.headers["location"] == f"/v1/datasets/{info['id']}"
    # the same content again, under another name and another way: the same dataset
    again = client.post("/v1/datasets", files={"file": ("copy.csv", body, "text/csv")})
    assert again.status_code == 200 and again.json()["id"] == info["id"]
    assert client.get(f"/v1/datasets/{info['id']}").json() == info
    assert [d["id"] for d in client.get("/v1/datasets").json()["data"]] == [info["id"]]

    schema = client.get(f"/v1/datasets/{info['id']}/schema").json()
    assert schema["target"]["column"] == "churned" and schema["target"]["task"] == "classification"
    kinds = {c["name"]: c["kind"] for c in schema["columns"]}
    assert kinds["customer_id"] == "identifier" and kinds["monthly_spend"] == "numeric"
    cached = tmp_path / "store" / "datasets" / info["id"] / "schema.json"
    assert cached.is_file()  # detected once, kept beside the file

    assert client.delete(f"/v1/datasets/{info['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{info['id']}").status_code == 404
    assert client.get("/v1/datasets").json() == {"data": []}
    assert leftovers(tmp_path) == []


def test_formats_come_from_the_name_the_type_or_the_bytes(client, tmp_path):
    import pandas as pd

    frame = pd.read_csv(CHURN, dtype=str, keep_default_na=False).head(50)
    frame.to_parquet(tmp_path / "t.parquet")
    parquet = client.post("/v1/datasets", content=(tmp_path / "t.parquet").read_bytes())
    assert parquet.status_code == 201 and parquet.json()["format"] == "parquet"
    tsv = frame.to_csv(sep="\t", index=False).encode()
    answer = client.post(
        "/v1/datasets", content=tsv, headers={"Content-Type": "text/tab-separated-values"}
    )
    assert answer.json()["format"] == "tsv" and answer.json()["rows"] == 50
    jsonl = frame.to_json(orient="records", lines=True).encode()
    answer = client.post("/v1/datasets?name=rows.jsonl", content=jsonl)
    assert answer.json()["format"] == "jsonl" and answer.json()["columns"][0] == "customer_id"


def test_a_path_inside_the_data_roots_is_imported_and_one_outside_is_refused(client):
    answer = client.post("/v1/datasets", json={"path": str(CHURN)})
    assert answer.status_code == 201 and answer.json()["source"].startswith("path:")
    assert answer.json()["name"] == "churn.csv"
    outside = client.post("/v1/datasets", json={"path": "/etc/hostname"})
    assert outside.status_code == 400 and outside.json()["error"]["field"] == "path"
    both = client.post("/v1/datasets", json={"path": str(CHURN), "source": "s3://b/k"})
    assert both.status_code == 400
    unknown = client.post("/v1/datasets", json={"url": "http://x"})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "url"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty"),
        (b"a,b\n1,2\n3,4,5\n", "line 3 has 3 fields"),
        (b"\x00\x01\x02\x03" * 100, "neither text nor Parquet"),
        (b"a,b\n", "no rows"),
    ],
)
def test_what_is_not_a_table_is_a_400_and_leaves_nothing(client, tmp_path, content, words):
    answer = client.post(
        "/v1/datasets?name=x.csv" if content[:1] != b"\x00" else "/v1/datasets", content=content
    )
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]["message"]
    assert client.get("/v1/datasets").json() == {"data": []}
    assert leftovers(tmp_path) == []


def test_over_the_limit_is_413_by_length_or_by_count_and_nothing_stays(client, tmp_path):
    big = b"a,b\n" + b"1,2\n" * (MIB // 4 + 1)
    declared = client.post("/v1/datasets", content=big, headers={"Content-Type": "text/csv"})
    assert declared.status_code == 413 and "1048576" in declared.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"1,2\n" * 8192

    streamed = client.post("/v1/datasets", content=chunks(), headers={"Content-Type": "text/csv"})
    assert streamed.status_code == 413
    assert client.get("/v1/datasets").json() == {"data": []}
    assert leftovers(tmp_path) == []
    # the inference routes keep their own, smaller limit
    small = client.post("/v1/classify", content=b"{" + b" " * (2 * MIB) + b"}")
    assert small.status_code == 413


def test_ids_are_checked_and_keys_guard_every_route(tmp_path):
    c, _ = make_client(tmp_path, api_keys=[KEY])
    with c:
        for method, path in [
            ("GET", "/v1/datasets"),
            ("POST", "/v1/datasets"),
            ("GET", "/v1/datasets/ds-0123456789abcdef/schema"),
            ("DELETE", "/v1/datasets/ds-0123456789abcdef"),
        ]:
            assert c.request(method, path).status_code == 401, path
        auth = {"Authorization": f"Bearer {KEY}"}
        assert c.get("/v1/datasets/ds-0123456789abcdef", headers=auth).status_code == 404
        bad = c.get("/v1/datasets/..%2F..%2Fetc", headers=auth)
        assert bad.status_code in (400, 404)
        assert c.get("/v1/datasets/ds-XYZ", headers=auth).status_code == 400


def test_a_job_names_a_dataset_by_its_id(tmp_path):
    settings = Settings(store=tmp_path / "store", data_roots=[REPO / "data"])
    store = DatasetStore(datasets_root(settings))
    info, created = store.add_file(CHURN, max_bytes=10 * MIB, source="test")
    assert created and store.add_file(CHURN, max_bytes=10 * MIB, source="test")[1] is False
    assert resolve_data(info.id, settings) == store.root / info.id / "data.csv"
    assert resolve_data(str(CHURN), settings) == CHURN.resolve()
    with pytest.raises(Exception, match="No dataset ds-ffffffffffffffff"):
        resolve_data("ds-ffffffffffffffff", settings)


# --- S3-compatible stores (moto's server on 127.0.0.1) -------------------------------------
@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_an_s3_uri_is_imported_with_the_settings_keys(tmp_path, s3_server, monkeypatch):
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket="tables")
    s3.put_object(Bucket="tables", Key="exports/churn.csv", Body=CHURN.read_bytes())
    s3.put_object(Bucket="tables", Key="big.csv", Body=b"a,b\n" + b"1,2\n" * (MIB // 2))
    c, _ = make_client(
        tmp_path,
        s3_endpoint_url=s3_server,
        s3_region="us-east-1",
        s3_access_key_id="test",
        s3_secret_access_key="test",
        dataset_max_mib=1,
    )
    with c:
        answer = c.post("/v1/datasets", json={"source": "s3://tables/exports/churn.csv"})
        assert answer.status_code == 201, answer.text
        info = answer.json()
        assert (info["name"], info["rows"], info["source"]) == (
            "churn.csv",
            3000,
            "s3://tables/exports/churn.csv",
        )
        missing = c.post("/v1/datasets", json={"source": "s3://tables/nope.csv"})
        assert missing.status_code == 404 and "does not exist" in missing.json()["error"]["message"]
        too_big = c.post("/v1/datasets", json={"source": "s3://tables/big.csv"})
        assert too_big.status_code == 413
        bad = c.post("/v1/datasets", json={"source": "s3://Bad_Bucket/x"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "source"
    assert leftovers(tmp_path) == []


def test_an_unreachable_s3_store_is_a_quick_503(tmp_path):
    c, _ = make_client(
        tmp_path,
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
        s3_access_key_id="test",
        s3_secret_access_key="test",
        s3_region="us-east-1",
        s3_timeout_s=1,
    )
    with c:
        answer = c.post("/v1/datasets", json={"source": "s3://tables/x.csv"})
    assert answer.status_code == 503 and answer.json()["error"]["field"] == "source"


def test_without_the_tabular_extra_uploads_are_a_clear_501(client, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    answer = client.post("/v1/datasets?name=t.csv", content=b"a,b\n1,2\n")
    assert answer.status_code == 501, answer.text
    assert "pip install 'fnbundle[tabular]'" in answer.json()["error"]["message"]
    assert leftovers(tmp_path) == []


def test_a_runpod_gateway_copies_each_dataset_to_the_workers_volume(
    tmp_path, s3_server, monkeypatch
):
    """FNB_JOBS_RUNPOD_VOLUME: an upload is also written to the network volume through its
    S3 API, where a worker's store (the volume's fnbundle/store) finds it by id."""
    import boto3
    from fnbundle.datasets import DatasetStore

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    keys = {"s3_access_key_id": "test", "s3_secret_access_key": "test", "s3_region": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    s3.create_bucket(Bucket="vol-abc123")
    c, _ = make_client(tmp_path, s3_endpoint_url=s3_server, jobs_runpod_endpoint="ep-1",
                       runpod_api_key="rpa_test", jobs_runpod_volume="vol-abc123", **keys)  # fmt: skip
    with c:
        answer = c.post("/v1/datasets?name=churn.csv", content=CHURN.read_bytes(),
                        headers={"content-type": "text/csv"})  # fmt: skip
        assert answer.status_code == 201, answer.text
        dataset = answer.json()["id"]
        listed = s3.list_objects_v2(Bucket="vol-abc123", Prefix="fnbundle/store/datasets/")
        keys_there = sorted(o["Key"] for o in listed["Contents"])
        assert keys_there == [f"fnbundle/store/datasets/{dataset}/data.csv",
                              f"fnbundle/store/datasets/{dataset}/info.json"]  # fmt: skip
        # What a worker mounting the volume sees: the dataset, readable by its id.
        volume = tmp_path / "volume" / "datasets" / dataset
        volume.mkdir(parents=True)
        for key in keys_there:
            s3.download_file("vol-abc123", key, str(volume / key.rsplit("/", 1)[1]))
        worker = DatasetStore(tmp_path / "volume" / "datasets")
        assert worker.data_path(dataset).read_bytes() == CHURN.read_bytes()
        # Lost on the volume: posting the same file again copies it again.
        s3.delete_object(Bucket="vol-abc123", Key=f"fnbundle/store/datasets/{dataset}/info.json")
        again = c.post("/v1/datasets?name=churn.csv", content=CHURN.read_bytes(),
                       headers={"content-type": "text/csv"})  # fmt: skip
        assert again.status_code == 200
        s3.head_object(Bucket="vol-abc123", Key=f"fnbundle/store/datasets/{dataset}/info.json")
        assert c.delete(f"/v1/datasets/{dataset}").status_code == 204
        gone = s3.list_objects_v2(Bucket="vol-abc123", Prefix="fnbundle/store/datasets/")
        assert gone.get("KeyCount") == 0


def test_a_volume_that_cannot_be_written_is_a_503_and_the_dataset_is_kept(tmp_path):
    c, _ = make_client(tmp_path, s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                       s3_access_key_id="test", s3_secret_access_key="test",
                       s3_region="us-east-1", s3_timeout_s=1, jobs_runpod_endpoint="ep-1",
                       runpod_api_key="rpa_test", jobs_runpod_volume="vol-abc123")  # fmt: skip
    with c:
        answer = c.post("/v1/datasets?name=churn.csv", content=CHURN.read_bytes(),
                        headers={"content-type": "text/csv"})  # fmt: skip
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert "not on the RunPod volume" in error["message"] and "again" in error["message"]
        assert len(c.get("/v1/datasets").json()["data"]) == 1  # kept here
