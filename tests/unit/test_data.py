import json

import pytest
from fnbundle.errors import DatasetError, InvalidRequest, NotFound
from fnbundle.training.data import load_text_dataset, make_splits

pytestmark = pytest.mark.unit


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_with_split_column(tmp_path):
    rows = [f"good {i},pos,{'test' if i % 5 == 0 else 'train'}" for i in range(20)]
    rows += [f"bad {i},neg,{'test' if i % 5 == 0 else 'train'}" for i in range(20)]
    ds = load_text_dataset(write_csv(tmp_path / "d.csv", rows, "text,label,split"), [tmp_path])
    assert ds.label_names == ["neg", "pos"] and len(ds.texts) == 40
    splits = make_splits(ds, 0.25, seed=1)
    assert sorted(splits.test) == [i for i in range(40) if ds.splits[i] == "test"]
    assert not set(splits.validation) & set(splits.train)  # validation comes out of train
    assert not set(splits.test) & set(splits.train + splits.validation)
    assert {ds.labels[i] for i in splits.validation} == {"neg", "pos"}


def test_jsonl_and_stratified_split(tmp_path):
    lines = [json.dumps({"text": f"t{i}", "label": ["a", "b", "c"][i % 3]}) for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_text_dataset(tmp_path / "d.jsonl", [tmp_path])
    splits = make_splits(ds, 0.2, seed=3)
    assert splits.test == splits.validation and len(splits.test) == 6
    assert sorted(splits.train + splits.test) == list(range(30))
    assert make_splits(ds, 0.2, seed=3) == splits  # deterministic for a seed


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["hello,pos", "bye,pos"], "text,label", "1 distinct label"),
        (["hello,pos", ",neg"], "text,label", "row 3: empty 'text'"),
        (["hello,pos", "bye,"], "text,label", "row 3: empty 'label'"),
        (["hello,pos"], "body,label", "no 'text' column"),
        (["hello,pos,later", "bye,neg,train"], "text,label,split", "split must be train or test"),
    ],
)
def test_bad_datasets_name_the_problem(tmp_path, rows, header, message):
    with pytest.raises(DatasetError, match=message):
        load_text_dataset(write_csv(tmp_path / "d.csv", rows, header), [tmp_path])


def test_paths_outside_roots_missing_files_and_formats(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = write_csv(tmp_path / "d.csv", ["a,x", "b,y"])
    with pytest.raises(InvalidRequest, match="outside the allowed roots"):
        load_text_dataset(outside, [root])
    with pytest.raises(InvalidRequest):
        load_text_dataset(root / ".." / "d.csv", [root])
    with pytest.raises(NotFound):
        load_text_dataset(root / "missing.csv", [root])
    (root / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match="unsupported format"):
        load_text_dataset(root / "d.parquet", [root])
    (root / "bad.jsonl").write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2 is not JSON"):
        load_text_dataset(root / "bad.jsonl", [root])


def test_shipped_demo_dataset_is_well_formed():
    from tests.conftest import REPO, SHIPPED_REVIEWS

    ds = load_text_dataset(SHIPPED_REVIEWS, [REPO])
    assert len(ds.texts) >= 600 and ds.label_names == ["negative", "positive"]
    held_out = [i for i, s in enumerate(ds.splits) if s == "test"]
    assert len(held_out) >= 100
    assert len(set(ds.texts)) == len(ds.texts)


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("a" * 5000 + ".csv", None, InvalidRequest, "over the limit"),
        ("b" * 300 + ".csv", None, InvalidRequest, "too long"),
        ("huge.csv", b"text,label\n" + b"x" * 200_000 + b",pos\n", DatasetError, "field limit"),
    ],
)
def test_unreadable_datasets_are_a_clear_error_naming_data(tmp_path, name, content, error, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message) as exc:
        load_text_dataset(str(path), [tmp_path])
    assert exc.value.field == "data" and exc.value.status == 400


def test_a_folder_is_not_a_dataset(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DatasetError, match="is a folder"):
        load_text_dataset(str(tmp_path / "d.csv"), [tmp_path])
