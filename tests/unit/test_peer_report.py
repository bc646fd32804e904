"""The benchmarks' verdicts against the peer servers: per-round best peer, paired ratios,
targets, the choice of peers, and the embedding peers' copy of the gateway's graph; no
peer needs to be installed.

The report divides the gateway's figure by the best peer's in the same round (the highest
throughput, the lowest p50), judges each target on the median of those ratios and says
which rounds met it; a peer without a valid figure in a round is never the best.
"""

from __future__ import annotations

import math
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

sys.path.insert(0, str(REPO / "loadtests"))

import bench_classify  # noqa: E402
import bench_embed  # noqa: E402
import bench_levers  # noqa: E402
import loadgen  # noqa: E402
import numpy as np  # noqa: E402
import peer_report  # noqa: E402
from peers import catalog, models  # noqa: E402

from tests.unit import tiny_onnx  # noqa: E402

PEERS = ["litserve", "bentoml"]


def row(rnd: int, scenario: str, system: str, **metrics: float) -> dict:
    return {"round": rnd, "scenario": scenario, "system": system, **metrics}


def test_each_round_is_compared_with_that_rounds_best_peer() -> None:
    rows = [
        row(0, "short-32", "ours", throughput=300.0),
        row(0, "short-32", "litserve", throughput=200.0),
        row(0, "short-32", "bentoml", throughput=150.0),
        row(1, "short-32", "ours", throughput=300.0),
        row(1, "short-32", "litserve", throughput=180.0),
        row(1, "short-32", "bentoml", throughput=250.0),
        row(2, "short-32", "ours", throughput=280.0),
        row(2, "short-32", "litserve", throughput=200.0),
        row(2, "short-32", "bentoml", throughput=100.0),
    ]
    (verdict,) = peer_report.judge(rows, peer_report.peer_targets({"short-32": 32}), PEERS)
    assert [(r["best"], round(r["ratio"], 2), r["met"]) for r in verdict["rounds"]] == [
        ("litserve", 1.5, True),
        ("bentoml", 1.2, False),
        ("litserve", 1.4, True),
    ]
    assert verdict["median"] == pytest.approx(1.4)
    assert verdict["met"] and verdict["rounds_met"] == 2


def test_a_missed_median_is_not_met_even_when_some_rounds_were() -> None:
    rows = [
        row(0, "long-32", "ours", throughput=130.0),
        row(0, "long-32", "litserve", throughput=100.0),
        row(1, "long-32", "ours", throughput=100.0),
        row(1, "long-32", "litserve", throughput=100.0),
        row(2, "long-32", "ours", throughput=110.0),
        row(2, "long-32", "litserve", throughput=100.0),
    ]
    (verdict,) = peer_report.judge(rows, peer_report.peer_targets({"long-32": 32}), PEERS)
    assert verdict["median"] == pytest.approx(1.1)
    assert not verdict["met"] and verdict["rounds_met"] == 1


def test_at_one_client_the_lowest_p50_is_the_best_and_ours_must_not_be_slower() -> None:
    rows = [
        row(0, "short-1", "ours", p50_ms=8.0, throughput=120.0),
        row(0, "short-1", "litserve", p50_ms=11.0, throughput=90.0),
        row(0, "short-1", "bentoml", p50_ms=7.0, throughput=130.0),
        row(1, "short-1", "ours", p50_ms=6.0, throughput=150.0),
        row(1, "short-1", "litserve", p50_ms=10.0, throughput=95.0),
        row(1, "short-1", "bentoml", p50_ms=9.0, throughput=110.0),
    ]
    (target,) = peer_report.peer_targets({"short-1": 1})
    assert target.metric == "p50_ms"
    rounds = peer_report.round_ratios(rows, target, PEERS)
    assert [(r["best"], r["met"]) for r in rounds] == [("bentoml", False), ("bentoml", True)]
    assert rounds[0]["ratio"] == pytest.approx(8.0 / 7.0)


def test_a_peer_without_valid_answers_is_never_the_best() -> None:
    rows = [
        row(0, "short-1", "ours", p50_ms=8.0),
        row(0, "short-1", "litserve", p50_ms=math.nan),  # every request failed
        row(0, "short-1", "bentoml", p50_ms=12.0),
        row(1, "short-1", "ours", p50_ms=8.0),
        row(1, "short-1", "litserve", p50_ms=math.nan),
        row(0, "short-32", "ours", throughput=300.0),
        row(0, "short-32", "litserve", throughput=0.0),
    ]
    targets = peer_report.peer_targets({"short-1": 1, "short-32": 32})
    by_name = {v["scenario"]: v for v in peer_report.judge(rows, targets, PEERS)}
    assert [r["best"] for r in by_name["short-1"]["rounds"]] == ["bentoml"]  # round 1: none
    assert by_name["short-32"]["rounds"] == []
    assert math.isnan(by_name["short-32"]["median"]) and not by_name["short-32"]["met"]


def test_the_roofline_target_divides_by_the_int8_bound_not_by_a_peer() -> None:
    rows = [
        row(0, "long-32", "ours", throughput=76.2),
        row(0, "long-32", "litserve", throughput=200.0),
    ]
    targets = peer_report.peer_targets({"long-32": 32}, roofline="long-32")
    roofline = next(v for v in peer_report.judge(rows, targets, PEERS) if "roofline" in v["target"])
    assert roofline["rounds"][0]["best"] == "roofline"
    assert roofline["median"] == pytest.approx(76.2 / peer_report.INT8_ROOFLINE)
    assert roofline["met"]  # 0.6 of 127 is 76.2


def test_markdown_names_each_rounds_best_peer_and_the_missed_rounds() -> None:
    rows = [
        row(0, "short-32", "ours", throughput=300.0),
        row(0, "short-32", "litserve", throughput=200.0),
        row(1, "short-32", "ours", throughput=200.0),
        row(1, "short-32", "bentoml", throughput=200.0),
    ]
    md = peer_report.markdown(
        peer_report.judge(rows, peer_report.peer_targets({"short-32": 32}), PEERS)
    )
    assert "| round 1 | round 2 | median | met |" in md
    assert "1.50 litserve | 1.00 bentoml (no) | 1.25 | no (1/2 rounds) |" in md


def test_the_classification_summary_carries_the_peer_verdicts_and_per_peer_ratios() -> None:
    rows = []
    for rnd in range(2):
        rows += [
            row(rnd, "short-1", "B1", throughput=40.0, p50_ms=25.0),
            row(rnd, "short-1", "ours", throughput=120.0, p50_ms=8.0),
            row(rnd, "short-1", "litserve", throughput=90.0, p50_ms=11.0),
            row(rnd, "long-32", "ours", throughput=90.0, p50_ms=300.0),
            row(rnd, "long-32", "B2", throughput=100.0, batch_p50_ms=320.0),
            row(rnd, "long-32", "litserve", throughput=60.0, p50_ms=500.0),
        ]
    scenarios = [s for s in bench_classify.SCENARIOS if s.key in {"short-1", "long-32"}]
    summary = bench_classify.summarize(rows, scenarios)
    verdicts = {v["target"]: v for v in summary["peer_targets"]}
    assert set(verdicts) == {
        "short-1: p50 <= best peer's",
        "long-32: >= 1.3x best peer texts/s",
        "long-32: >= 0.6 of the int8 roofline (127/s)",
    }
    assert verdicts["long-32: >= 1.3x best peer texts/s"]["median"] == pytest.approx(1.5)
    assert summary["scenarios"]["short-1"]["ratios"]["p50_ms ours/litserve"] == pytest.approx(
        8.0 / 11.0
    )
    assert "litserve" in summary["scenarios"]["long-32"]
    assert "1.50 litserve" in bench_classify.markdown(summary, scenarios)
    per_peer = bench_classify.peers_markdown(rows, scenarios)
    assert "| 128-token texts, 32 clients | 1.50 | 0.60 |" in per_peer


def test_peers_are_picked_by_name_and_only_when_installed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(catalog, "VENVS", tmp_path)
    (tmp_path / "litserve").mkdir()
    (tmp_path / "litserve" / ".installed").touch()
    assert [p.name for p in catalog.pick("classify", None)] == ["litserve"]
    assert catalog.pick("classify", "none") == []
    assert [p.name for p in catalog.pick("classify", "litserve")] == ["litserve"]
    with pytest.raises(SystemExit, match="bentoml is not installed .* run `make peers`"):
        catalog.pick("classify", "litserve,bentoml")
    with pytest.raises(SystemExit, match="'infinity' is not a classify peer"):
        catalog.pick("classify", "infinity")


def test_a_batchable_apis_list_of_one_answer_is_a_valid_prediction() -> None:
    assert loadgen._valid(200, b'[{"label": "positive", "score": 0.9}]')
    assert not loadgen._valid(200, b'[{"label": "a"}, {"label": "b"}]')
    assert loadgen._valid(200, b'{"predictions": [{"label": "positive"}]}')
    assert not loadgen._valid(500, b'[{"label": "positive"}]')


def test_the_embedding_summary_judges_like_with_like_and_the_gateway_against_all() -> None:
    """The gateway against the served peers, fnbundle in process against the in-process
    libraries, the gateway against every peer; classification is not an embedding peer's."""
    rows = []
    for rnd in range(3):
        rows += [
            row(rnd, "embed-short-1", "ours", throughput=80.0, p50_ms=10.0),
            row(rnd, "embed-short-1", "ours-lib", throughput=110.0, p50_ms=8.0),
            row(rnd, "embed-short-1", "infinity", throughput=50.0, p50_ms=20.0),
            row(rnd, "embed-short-1", "fastembed", throughput=90.0, p50_ms=9.0),
            row(rnd, "embed-short-32", "ours", throughput=300.0, p50_ms=100.0),
            row(rnd, "embed-short-32", "infinity", throughput=150.0, p50_ms=200.0),
            row(rnd, "embed-short-32", "fastembed", throughput=200.0, batch_p50_ms=160.0),
            row(rnd, "classify-long", "ours", throughput=70.0, p50_ms=400.0),
        ]
    verdicts = bench_embed.peer_verdicts(rows, ["infinity", "fastembed"])
    by_name = {v["target"]: v for v in verdicts}
    assert set(by_name) == {
        "embed-short-1 (gateway vs served peers): p50 <= best peer's",
        "embed-short-1 (in process vs in-process peers): p50 <= best peer's",
        "embed-short-1 (gateway vs every peer): p50 <= best peer's",
        "embed-short-32 (gateway vs served peers): >= 1.3x best peer texts/s",
        "embed-short-32 (gateway vs every peer): >= 1.3x best peer texts/s",
    }  # no ours-lib row under load, no peer row for classification: not judged
    served = by_name["embed-short-1 (gateway vs served peers): p50 <= best peer's"]
    assert served["rounds"][0]["best"] == "infinity" and served["met"]  # 10 ms against 20
    lib = by_name["embed-short-1 (in process vs in-process peers): p50 <= best peer's"]
    assert lib["rounds"][0]["best"] == "fastembed" and lib["median"] == pytest.approx(8 / 9)
    across = by_name["embed-short-1 (gateway vs every peer): p50 <= best peer's"]
    assert not across["met"] and across["rounds"][0]["best"] == "fastembed"  # 10 against 9
    loaded = by_name["embed-short-32 (gateway vs every peer): >= 1.3x best peer texts/s"]
    assert loaded["median"] == pytest.approx(1.5) and loaded["rounds"][0]["best"] == "fastembed"
    assert bench_embed.peer_verdicts(rows, []) == []
    report = bench_embed.markdown({"rows": rows, "round_ratios": [], "peer_targets": verdicts})
    assert "fnbundle in process against the in-process libraries" in report
    assert "| embeddings, short reviews, 1 client | ours-lib | 110.0 | 8.0 |" in report


def _run(path, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_the_peers_graph_is_the_gateways_cut_before_pooling(tmp_path) -> None:
    """The embedding peers pool the cut graph's token vectors themselves and must land on
    the gateway's sentence vectors (the tiny graph sums and normalises: the same as a mean)."""
    gateway, peers = tmp_path / "model.onnx", tmp_path / "peers.onnx"
    gateway.write_bytes(tiny_onnx._embed_onnx_model())
    models.cut_before_pooling(gateway, peers, width=tiny_onnx.EMBED_DIMENSIONS)
    ids = np.array([[2, 5, 9, 0], [3, 8, 0, 0]], dtype=np.int64)  # padded with 0
    mask = (ids != 0).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": mask}
    hidden = _run(peers, feed)
    assert hidden.shape == (2, 4, tiny_onnx.EMBED_DIMENSIONS)
    pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, _run(gateway, feed), atol=1e-6)


def test_a_graph_without_mean_pooling_is_refused(tmp_path) -> None:
    classifier = tmp_path / "classifier.onnx"
    classifier.write_bytes(tiny_onnx._onnx_model(2))
    with pytest.raises(ValueError, match="no mean pooling"):
        models.cut_before_pooling(classifier, tmp_path / "cut.onnx", width=2)


def test_every_system_takes_every_position_over_the_rounds() -> None:
    names = ["ours", "infinity", "fastembed", "ours-lib"]
    orders = [peer_report.round_order(names, r) for r in range(8)]
    assert orders[0] == names and orders[1] == ["infinity", "fastembed", "ours-lib", "ours"]
    assert all(sorted(order) == sorted(names) for order in orders)
    for position in range(len(names)):  # each system first, second, ... once in 4 rounds
        assert {order[position] for order in orders[:4]} == set(names)
    assert orders[4:] == orders[:4]
    assert peer_report.round_order([], 3) == []


def test_every_gateway_lever_variant_can_be_chosen_and_its_settings_are_valid(monkeypatch):
    from fnbundle.settings import Settings

    names = list(bench_levers.GATEWAY_VARIANTS)
    assert bench_levers.chosen_variants(",".join(names)) == names  # the default: all of them
    assert bench_levers.chosen_variants(" after , before") == ["after", "before"]
    with pytest.raises(SystemExit, match="choose from"):
        bench_levers.chosen_variants("after,unknown")
    for _tree, env in bench_levers.GATEWAY_VARIANTS.values():
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        Settings()  # each variant's environment is one the gateway accepts
        for key in env:
            monkeypatch.delenv(key)
