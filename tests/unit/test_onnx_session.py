"""The gateway's ONNX Runtime session settings: what FNB_THREADS and FNB_ONNX_SPINNING set."""

import numpy as np
import pytest
from fnbundle.runtime.onnx import onnx_runner, session_options
from fnbundle.settings import Settings
from pydantic import ValidationError

from tests.unit.tiny_onnx import _onnx_model

pytestmark = pytest.mark.unit

SPIN_KEYS = (
    "session.intra_op.allow_spinning",
    "session.inter_op.allow_spinning",
    "session.force_spinning_stop",
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("run", ["1", "1", "1"]),  # spin during a pass, stop when it returns
        ("on", ["1", "1", "0"]),
        ("off", ["0", "0", "0"]),
        ("true", ["1", "1", "0"]),  # the earlier boolean form
        ("False", ["0", "0", "0"]),
        ("0", ["0", "0", "0"]),
    ],
)
def test_spinning_follows_the_setting(monkeypatch, value, expected):
    monkeypatch.setenv("FNB_ONNX_SPINNING", value)
    options = session_options(Settings(threads=3))
    assert [options.get_session_config_entry(k) for k in SPIN_KEYS] == expected
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)


def test_by_default_threads_spin_only_while_a_pass_runs(monkeypatch):
    monkeypatch.delenv("FNB_ONNX_SPINNING", raising=False)
    assert Settings().onnx_spinning == "run"
    options = session_options(Settings(threads=2))
    assert [options.get_session_config_entry(k) for k in SPIN_KEYS] == ["1", "1", "1"]


@pytest.mark.parametrize("bad", ["sometimes", "2", ""])
def test_a_spinning_value_that_is_not_a_mode_is_refused(monkeypatch, bad):
    monkeypatch.setenv("FNB_ONNX_SPINNING", bad)
    with pytest.raises(ValidationError, match="onnx_spinning"):
        Settings()


def test_every_spinning_mode_answers_the_same(tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(_onnx_model(2))
    feed = {
        "input_ids": np.array([[2, 8, 9], [5, 6, 0]]),
        "attention_mask": np.ones((2, 3), np.int64),
    }
    answers = [
        onnx_runner(str(path), Settings(threads=1, onnx_spinning=spin))[0](feed)
        for spin in ("run", "on", "off")
    ]
    np.testing.assert_array_equal(answers[0], answers[1])
    np.testing.assert_array_equal(answers[0], answers[2])
    assert answers[0][0].argmax() == 1 and answers[0][1].argmax() == 0  # good vs bad words
