"""A compare run on a 100k-row table: every model of the task on the demo table's kind of
data (``data/make_churn.py --rows 100000``; churn by default, ``--target monthly_spend``
for the regression models), timed per model, with the run's peak
memory, through the same ``train_tabular`` a job runs.

What it reports: the wall time of the whole run (read, schema, split, the models, the
importances of the best, the ONNX export with its parity check, the pictures, publishing),
each model's fit time and held-out accuracy, and the process's peak resident memory
(``ru_maxrss``) against its size before the run. scikit-learn's forests and the
histogram-based boosting use every core (``n_jobs=-1``, OpenMP); the kernel SVM is fitted
on a 20k-row sample (its cost is quadratic in rows).

Run: ``.venv/bin/python loadtests/bench_tabular_compare.py`` (``--rows`` to change the
size); the report is printed and written to ``.bench/tabular_compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from review_texts import REPO


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A compare run on a large table: time and memory.")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--target", help="the column to predict (default: the proposed one, churned)")
    p.add_argument("--out", type=Path, default=REPO / ".bench" / "tabular_compare.json")
    return p.parse_args()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    args = parse_args()
    from fnbundle.settings import Settings
    from fnbundle.tasks.train_tabular.params import TrainTabularParams
    from fnbundle.training.tabular import train_tabular

    work = Path(tempfile.mkdtemp(prefix="fnb-compare-"))
    table = work / f"churn-{args.rows}.csv"
    subprocess.run(
        [sys.executable, str(REPO / "data" / "make_churn.py"), "--rows", str(args.rows),
         "--out", str(table)],
        check=True,
    )  # fmt: skip
    settings = Settings(store=work / "store", data_roots=[work])
    before = rss_mib()
    events: list[dict] = []
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        result = train_tabular(
            TrainTabularParams(data=str(table), name="churn-large", target=args.target),
            settings,
            events.append,
        )
    wall = time.perf_counter() - started
    main = "accuracy" if result.schema_.target.task == "classification" else "r2"
    report = {
        "rows": args.rows,
        "target": result.schema_.target.column,
        "width": len(result.artifact.manifest["features"]),
        "cores": len(os.sched_getaffinity(0)),
        "wall_s": round(wall, 1),
        "rss_before_mib": round(before),
        "peak_rss_mib": round(rss_mib()),
        "best": result.best,
        "models": [
            {
                "model": c.model,
                "fit_s": c.fit_s,
                main: c.metrics[main],
                **({"training": c.training} if c.training else {}),
            }
            for c in result.leaderboard
        ],
        "artifact_mib": round(
            sum(f.stat().st_size for f in result.artifact.path.rglob("*") if f.is_file()) / 2**20,
            1,
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
