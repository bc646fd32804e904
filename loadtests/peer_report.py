"""The gateway against the best peer: paired per-round ratios and the issue's targets.

Rows are the benchmarks' raw measurements, one per round, scenario and system:
``{"round": 0, "scenario": "short-32", "system": "litserve", "throughput": 210.3,
"p50_ms": 140.2}``. In each round the best peer is the one with the highest throughput
(or the lowest p50) in that same round, so a peer that wins some rounds and loses others
is compared where it won; the gateway's figure is divided by that peer's.

Key rule: a target is judged on the median of the per-round ratios, and every round's
ratio and verdict is reported as well, because on a shared 2-core machine one round can
be an outlier and a ratio taken minutes apart holds where an absolute figure does not.
A peer with no valid answer in a round (no throughput, no p50) does not count as best.
A target may judge another of our systems (``ours``: fnbundle's library in process) against
some of the peers only (``against``: the in-process libraries), so like is compared with
like; by default it is the gateway against every peer. Within a round the systems run
in an order turned by one place each round (:func:`round_order`), so none always runs
first or right after the same neighbour.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

OURS = "ours"  # the gateway
OURS_IN_PROCESS = "ours-lib"  # fnbundle's library called in the benchmark's worker process
INT8_ROOFLINE = 127.0  # sequences/s: MiniLM-L6 int8, 128 tokens, 2 cores, AVX2 without VNNI


@dataclass(frozen=True)
class PeerTarget:
    name: str
    scenario: str
    metric: str  # "throughput" (higher wins) or "p50_ms" (lower wins)
    goal: float  # ours / best peer >= goal for throughput, <= goal for p50
    bound: float | None = None  # compare with this figure instead of a peer (a roofline)
    ours: str = OURS  # which of our systems is judged
    against: tuple[str, ...] | None = None  # only these peers (None: every peer given)

    @property
    def higher_wins(self) -> bool:
        return self.metric == "throughput"

    def met(self, ratio: float) -> bool:
        if math.isnan(ratio):
            return False
        return ratio >= self.goal if self.higher_wins else ratio <= self.goal


def peer_targets(
    scenarios: dict[str, int],
    roofline: str | None = None,
    *,
    ours: str = OURS,
    against: tuple[str, ...] | None = None,
    label: str = "",
) -> tuple[PeerTarget, ...]:
    """The issue's targets for ``scenarios`` (key -> its number of clients): >= 1.3x the
    best peer's throughput under load (32 clients), a p50 no worse than the best peer's at
    1 client, and ``roofline`` (a 128-token classification scenario) >= 0.6 of
    :data:`INT8_ROOFLINE`; for ``ours`` against ``against`` (``label`` says which, in the
    targets' names)."""
    targets = []
    for key, clients in scenarios.items():
        name = f"{key}{f' ({label})' if label else ''}"
        if clients > 1:
            metric, goal, rule = "throughput", 1.3, ">= 1.3x best peer texts/s"
        else:
            metric, goal, rule = "p50_ms", 1.0, "p50 <= best peer's"
        targets.append(PeerTarget(f"{name}: {rule}", key, metric, goal, None, ours, against))
    if roofline:
        name = f"{roofline}: >= 0.6 of the int8 roofline ({INT8_ROOFLINE:.0f}/s)"
        targets.append(PeerTarget(name, roofline, "throughput", 0.6, bound=INT8_ROOFLINE))
    return tuple(targets)


def round_order(names: list[str], round_index: int) -> list[str]:
    """``names`` turned left by ``round_index`` places: every system takes every position
    in turn, so a position's bias (the first after a pause, the one after a heavy peer
    whose threads are still winding down) falls on each system alike over the rounds."""
    if not names:
        return []
    k = round_index % len(names)
    return names[k:] + names[:k]


def _usable(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value > 0


def best_peer(
    figures: dict[str, float], peers: Iterable[str], higher_wins: bool
) -> tuple[str, float] | None:
    """The peer with the best usable figure, or None when no peer has one."""
    usable = [(name, figures[name]) for name in peers if _usable(figures.get(name))]
    if not usable:
        return None
    pick = max if higher_wins else min
    return pick(usable, key=lambda item: item[1])


def round_ratios(
    rows: list[dict[str, Any]], target: PeerTarget, peers: list[str]
) -> list[dict[str, Any]]:
    """Per round: the best peer (or the bound), ours / it, and whether the goal was met."""
    by_round: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["scenario"] == target.scenario and target.metric in r:
            by_round.setdefault(r["round"], {})[r["system"]] = r[target.metric]
    out = []
    for rnd in sorted(by_round):
        figures = by_round[rnd]
        ours = figures.get(target.ours)
        if not _usable(ours):
            continue
        if target.bound is not None:
            against: tuple[str, float] | None = ("roofline", target.bound)
        else:
            chosen = peers if target.against is None else [p for p in peers if p in target.against]
            against = best_peer(figures, chosen, target.higher_wins)
        if against is None:
            continue
        ratio = float(ours) / against[1]  # type: ignore[arg-type]
        out.append({"round": rnd, "best": against[0], "ratio": ratio, "met": target.met(ratio)})
    return out


def judge(
    rows: list[dict[str, Any]], targets: Iterable[PeerTarget], peers: list[str]
) -> list[dict[str, Any]]:
    """Every target with its per-round ratios, their median and the verdict on it."""
    verdicts = []
    for t in targets:
        per_round = round_ratios(rows, t, peers)
        median = statistics.median(r["ratio"] for r in per_round) if per_round else math.nan
        verdicts.append(
            {
                "target": t.name,
                "scenario": t.scenario,
                "goal": t.goal,
                "rounds": per_round,
                "median": median,
                "rounds_met": sum(r["met"] for r in per_round),
                "met": t.met(median),
            }
        )
    return verdicts


def per_peer_ratios(
    rows: list[dict[str, Any]], scenario: str, metric: str, peers: list[str], ours: str = OURS
) -> dict[str, float]:
    """Median over rounds of ``ours`` / each peer in ``scenario`` (paired within a round)."""
    out = {}
    for peer in peers:
        ratios = []
        for rnd in sorted({r["round"] for r in rows}):
            got = {
                r["system"]: r.get(metric)
                for r in rows
                if r["round"] == rnd and r["scenario"] == scenario
            }
            if _usable(got.get(ours)) and _usable(got.get(peer)):
                ratios.append(float(got[ours]) / float(got[peer]))  # type: ignore[arg-type]
        out[peer] = statistics.median(ratios) if ratios else math.nan
    return out


def markdown(verdicts: list[dict[str, Any]]) -> str:
    """One line per target: each round's ratio and best peer, the median, the verdict."""
    rounds = sorted({r["round"] for v in verdicts for r in v["rounds"]})
    lines = [
        "| target | " + " | ".join(f"round {r + 1}" for r in rounds) + " | median | met |",
        "|---|" + "--:|" * len(rounds) + "--:|---|",
    ]
    for v in verdicts:
        cells = {r["round"]: r for r in v["rounds"]}
        row = [
            f"{cells[r]['ratio']:.2f} {cells[r]['best']}{'' if cells[r]['met'] else ' (no)'}"
            if r in cells
            else ""
            for r in rounds
        ]
        median = "" if math.isnan(v["median"]) else f"{v['median']:.2f}"
        met = f"{'yes' if v['met'] else 'no'} ({v['rounds_met']}/{len(v['rounds'])} rounds)"
        lines.append(f"| {v['target']} | " + " | ".join(row) + f" | {median} | {met} |")
    return "\n".join(lines) + "\n"


def per_peer_markdown(
    rows: list[dict[str, Any]],
    scenarios: list[tuple[str, str]],
    peers: list[str],
    ours: str = OURS,
) -> str:
    """For each (key, title) scenario: the median paired ratio of ``ours`` to every peer,
    for throughput and p50 (blank where a peer has no such figure)."""
    if not peers:
        return ""
    head = [f"{ours}/{p} texts/s" for p in peers] + [f"{ours}/{p} p50" for p in peers]
    lines = ["| scenario | " + " | ".join(head) + " |", "|---|" + "--:|" * len(head)]
    for key, title in scenarios:
        tps = per_peer_ratios(rows, key, "throughput", peers, ours)
        p50 = per_peer_ratios(rows, key, "p50_ms", peers, ours)
        cells = [tps[p] for p in peers] + [p50[p] for p in peers]
        text = ["" if math.isnan(c) else f"{c:.2f}" for c in cells]
        lines.append(f"| {title} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"
