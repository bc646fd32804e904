import json
import os
from pathlib import Path

import pytest
from fnbundle.errors import InvalidRequest, NotFound, UnsafeArtifact
from fnbundle.loading import (
    builtin_dir,
    check_safe_model_dir,
    parse_model_ref,
    resolve_inside_roots,
    resolve_model_dir,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("ref", "kind", "name", "revision"),
    [
        ("sentiment", "store", "sentiment", None),
        ("sentiment-20261123-101500-a1b2c3", "store", "sentiment-20261123-101500-a1b2c3", None),
        ("builtin:minilm", "builtin", "minilm", None),
        ("hf:org/name@abc123", "hf", "org/name", "abc123"),
        ("hf:bert-base-uncased", "hf", "bert-base-uncased", None),
        ("./models/base", "path", "./models/base", None),
    ],
)
def test_model_references(ref, kind, name, revision):
    parsed = parse_model_ref(ref)
    assert (parsed.kind, parsed.name, parsed.revision) == (kind, name, revision)


@pytest.mark.parametrize(
    "ref",
    [
        "hf:a/b/c",
        "hf:../x",
        "hf:",
        "Bad Name",
        "hf:org/\ud800",
        "hf:org/x@../../y",
        "hf:org/x y",
        "hf:" + "x" * 300,
        "hf:org/x@" + "r" * 300,
    ],
)
def test_malformed_references_are_400(ref):
    with pytest.raises(InvalidRequest):
        parse_model_ref(ref)


def test_paths_stay_inside_their_roots(tmp_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert resolve_inside_roots(root / "data", [root], field="data") == (root / "data").resolve()
    for bad in [root / ".." / "outside", outside, "/etc/passwd", f"{root}/%2e%2e/outside"]:
        with pytest.raises(InvalidRequest, match="outside the allowed roots|Invalid path"):
            resolve_inside_roots(bad, [root], field="data")
    os.symlink(outside, root / "escape")
    with pytest.raises(InvalidRequest, match="outside the allowed roots"):
        resolve_inside_roots(root / "escape", [root], field="data")


def test_builtin_minilm_ships_with_its_package():
    folder = builtin_dir("minilm")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    with pytest.raises(NotFound, match="Unknown builtin"):
        builtin_dir("gpt5")


def test_remote_code_and_pickle_only_models_are_refused(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "x.Model"}}))
    (remote / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsafeArtifact, match="trust_remote_code"):
        check_safe_model_dir(remote)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(UnsafeArtifact, match="pickle"):
        check_safe_model_dir(pickled)


def test_a_symlinked_file_in_a_model_folder_cannot_leave_the_roots(tmp_path):
    from fnbundle.settings import Settings

    root, outside = tmp_path / "root", tmp_path / "outside"
    base = root / "base"
    base.mkdir(parents=True)
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"auto_map": {}, "secret": "x"}))
    (base / "model.safetensors").write_bytes(b"")
    os.symlink(outside / "config.json", base / "config.json")
    settings = Settings(store=tmp_path / "store", data_roots=[root])
    with pytest.raises(UnsafeArtifact, match="config.json.*links outside") as exc:
        resolve_model_dir(str(base), settings)
    assert exc.value.status == 400
    # A link that stays inside the roots is fine: the file it names may be read.
    (root / "config.json").write_text("{}")
    (base / "config.json").unlink()
    os.symlink(root / "config.json", base / "config.json")
    assert resolve_model_dir(str(base), settings) == base.resolve()


def test_a_symlinked_subfolder_cannot_leave_the_model_folder(tmp_path):
    folder, outside = tmp_path / "model", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    os.symlink(outside, folder / "extra")
    with pytest.raises(UnsafeArtifact, match="extra"):
        check_safe_model_dir(folder)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("a" * 5000, "over the limit of 1024"),
        ("a" * 300, "too long"),
        ("x\x00y", "Invalid"),
        ("x\ud800y", "Invalid"),
        ("x\ny", "Invalid"),
    ],
)
def test_unusable_paths_are_a_clear_400(tmp_path, path, message):
    with pytest.raises(InvalidRequest, match=message) as exc:
        resolve_inside_roots(tmp_path / path, [tmp_path], field="data")
    assert exc.value.field == "data"


def test_a_hub_base_that_cannot_be_fetched_is_503_not_a_crash(tmp_path):
    # Tests run with HF_HUB_OFFLINE=1 (tests/conftest.py); the cache is empty.
    from fnbundle.errors import UpstreamUnavailable
    from fnbundle.settings import Settings

    settings = Settings(store=tmp_path / "store", hf_cache=tmp_path / "hf")
    with pytest.raises(UpstreamUnavailable, match="hf:org/nowhere@main") as exc:
        resolve_model_dir("hf:org/nowhere@main", settings)
    assert exc.value.status == 503 and exc.value.field == "base"


def test_a_cached_hub_snapshot_may_link_into_its_blobs_but_nowhere_else(tmp_path):
    from fnbundle.settings import Settings

    repo = tmp_path / "hf" / "models--org--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, data in {"config.json": "{}", "model.safetensors": ""}.items():
        (repo / "blobs" / name).write_text(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", name))
    settings = Settings(store=tmp_path / "store", hf_cache=tmp_path / "hf")
    assert resolve_model_dir("hf:org/tiny@main", settings) == snapshot.resolve()
    (tmp_path / "secret.json").write_text("{}")
    (snapshot / "tokenizer.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(UnsafeArtifact, match="tokenizer.json.*links outside"):
        resolve_model_dir("hf:org/tiny@main", settings)
