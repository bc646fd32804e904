import json
import os

import pytest
from fnbundle.errors import ArtifactCorrupt, InvalidRequest, NotFound, UnsafeArtifact
from fnbundle.store import Store

pytestmark = pytest.mark.unit


def publish(store: Store, name: str, files: dict[str, bytes], **extra):
    with store.staging(name) as staged:
        for rel, data in files.items():
            (staged / rel).write_bytes(data)
        return store.publish(
            staged, {"name": name, "task": "classify", "labels": ["a", "b"], **extra}
        )


def test_publish_writes_manifest_with_hashes_and_points_the_name(tmp_path):
    store = Store(tmp_path)
    artifact = publish(store, "demo", {"weights.onnx": b"abc", "tokenizer.json": b"{}"})
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    assert manifest["files"]["weights.onnx"] == {
        "size": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    assert manifest["name"] == "demo" and manifest["id"] == artifact.id
    assert store.resolve("demo").id == artifact.id
    assert store.resolve(artifact.id).id == artifact.id
    assert not any(store.staging_dir.iterdir())


def test_a_name_serves_its_newest_version(tmp_path):
    store = Store(tmp_path)
    first = publish(store, "demo", {"a.onnx": b"1"}, created="2026-01-01T00:00:00+00:00")
    second = publish(store, "demo", {"a.onnx": b"2"}, created="2026-02-01T00:00:00+00:00")
    assert store.resolve("demo").id == second.id
    assert store.resolve(first.id).id == first.id  # old versions stay addressable
    assert [a.id for a in store.list()] == [first.id, second.id]
    assert store.latest_ids() == {"demo": second.id}


def test_a_name_is_read_from_its_alias_once_until_the_alias_changes(tmp_path, monkeypatch):
    """A served request resolves its model by name: one stat while the alias is unchanged;
    a newer version, or an alias swapped for a symlink, is seen at the next request."""
    store = Store(tmp_path / "store")
    first = publish(store, "demo", {"a.onnx": b"1"}, created="2026-01-01T00:00:00+00:00")
    reads = []
    read_text = type(store.root).read_text
    monkeypatch.setattr(
        type(store.root),
        "read_text",
        lambda self, *a, **k: reads.append(self.name) or read_text(self, *a, **k),
    )
    assert [store.resolve_id("demo") for _ in range(3)] == [first.id] * 3
    assert reads == ["demo.json"]
    second = publish(store, "demo", {"a.onnx": b"2"}, created="2026-02-01T00:00:00+00:00")
    assert store.resolve_id("demo") == second.id
    alias = store.aliases_dir / "demo.json"
    (tmp_path / "elsewhere.json").write_text(alias.read_text())
    alias.unlink()
    os.symlink(tmp_path / "elsewhere.json", alias)
    with pytest.raises(ArtifactCorrupt, match="symlink"):
        store.resolve_id("demo")
    alias.unlink()
    with pytest.raises(NotFound):
        store.resolve_id("demo")


def test_failure_while_writing_leaves_nothing_visible(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.staging("demo") as staged:
        (staged / "model.onnx").write_bytes(b"half")
        raise RuntimeError("killed while saving")
    assert store.list() == []
    assert not any(store.staging_dir.iterdir())
    with pytest.raises(NotFound):
        store.resolve("demo")


@pytest.mark.parametrize(
    "ref",
    [
        "../etc",
        "..",
        "a/b",
        "/etc/passwd",
        "%2e%2e%2fsecrets",
        "..%2f",
        "Demo",
        "",
        "a" * 81,
        "x\x00y",
    ],
)
def test_names_cannot_leave_the_store(tmp_path, ref):
    with pytest.raises(InvalidRequest) as exc:
        Store(tmp_path).resolve(ref)
    assert exc.value.status == 400


def test_unknown_model_is_not_found(tmp_path):
    with pytest.raises(NotFound) as exc:
        Store(tmp_path).resolve("nope")
    assert exc.value.status == 404 and "nope" in exc.value.message


def test_verify_catches_a_changed_byte_and_a_missing_file(tmp_path):
    store = Store(tmp_path)
    artifact = publish(store, "demo", {"model.onnx": b"weights", "tokenizer.json": b"{}"})
    store.verify(artifact)
    (artifact.path / "model.onnx").write_bytes(b"weightz")
    with pytest.raises(ArtifactCorrupt, match=r"model\.onnx.*sha256") as exc:
        store.verify(artifact)
    assert artifact.id in exc.value.message
    os.remove(artifact.path / "tokenizer.json")
    with pytest.raises(ArtifactCorrupt, match="tokenizer.json is missing"):
        store.verify(artifact, hash_files=[])


def test_pickle_files_are_refused_at_publish(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(UnsafeArtifact, match="pytorch_model.bin"):
        publish(store, "demo", {"pytorch_model.bin": b"\x80\x04"})
    assert store.list() == []


def test_a_folder_without_manifest_is_corrupt_not_missing(tmp_path):
    store = Store(tmp_path)
    (store.models_dir / "demo-1").mkdir(parents=True)
    with pytest.raises(ArtifactCorrupt, match="manifest"):
        store.get("demo-1")


def rewrite_manifest(artifact, **changes):
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    (artifact.path / "manifest.json").write_text(json.dumps({**manifest, **changes}))


@pytest.mark.parametrize("rel", ["../../x", "/etc/hostname", "a/../../x", "./a", "a\\..\\x", ""])
def test_manifest_paths_outside_the_artifact_are_refused_before_any_read(tmp_path, rel):
    store = Store(tmp_path / "store")
    artifact = publish(store, "demo", {"model.onnx": b"weights"})
    (tmp_path / "x").write_bytes(b"secret")  # what ../../x would reach from models/<id>
    files = {"model.onnx": artifact.manifest["files"]["model.onnx"], rel: {"size": 6}}
    rewrite_manifest(artifact, files=files)
    with pytest.raises(ArtifactCorrupt, match="relative and inside") as exc:
        store.verify(store.resolve("demo"))
    assert exc.value.status == 503 and artifact.id in exc.value.message
    assert store.list() == []  # not listed as a servable model either


def test_symlinked_files_folders_and_aliases_are_refused(tmp_path):
    store = Store(tmp_path / "store")
    artifact = publish(store, "demo", {"model.onnx": b"weights", "tokenizer.json": b"{}"})
    secret = tmp_path / "secret.json"
    secret.write_bytes(b"{}")  # same size as the tokenizer it replaces

    # A file swapped for a symlink, even one whose size matches.
    (artifact.path / "tokenizer.json").unlink()
    os.symlink(secret, artifact.path / "tokenizer.json")
    with pytest.raises(ArtifactCorrupt, match="symlink"):
        store.verify(artifact, hash_files=[])
    with pytest.raises(ArtifactCorrupt, match="symlink"):
        artifact.file("tokenizer.json")

    # A model folder that is a symlink to a folder elsewhere.
    other = publish(Store(tmp_path / "other"), "demo", {"model.onnx": b"weights"})
    os.symlink(other.path, store.models_dir / "linked-1")
    with pytest.raises(ArtifactCorrupt, match="symlink"):
        store.resolve("linked-1")
    assert "linked-1" not in [a.id for a in store.list()]

    # An alias that is a symlink to an alias file elsewhere.
    (tmp_path / "alias.json").write_text(json.dumps({"id": artifact.id}))
    os.symlink(tmp_path / "alias.json", store.aliases_dir / "sneaky.json")
    with pytest.raises(ArtifactCorrupt, match="symlink"):
        store.resolve("sneaky")
    assert "sneaky" not in store.latest_ids()
