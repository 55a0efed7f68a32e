"""Analysis wall time on the full GSM8K train split (7,473 rows) with the MiniLM embedder, first run.

A fresh embedding cache and a fresh numba cache make it a true first run (UMAP's JIT compile
included). Goal: <= 4 min on a 2-core machine. The last line is one JSON object.

Run as: .venv/bin/python benchmarks/analysis_gsm8k.py [--gsm8k ../shared/data/gsm8k]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k", default=str(ROOT.parent / "shared" / "data" / "gsm8k"))
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))
    os.environ["TUNELAB_CACHE"] = str(scratch / "cache")  # no cached embeddings
    os.environ["NUMBA_CACHE_DIR"] = str(scratch / "numba")  # no cached JIT code
    t0 = time.time()
    from tunelab.analysis import analyze
    from tunelab.config import load_recipe
    from tunelab.rundir import RunDir
    cfg = load_recipe("gsm8k-smollm2-135m", [f"data.source={args.gsm8k}"])
    run = RunDir(scratch / "run")
    summary = analyze(cfg, run)
    wall = time.time() - t0
    clusters = json.loads((run.analysis_dir / "clusters.json").read_text())
    for c in clusters:
        print(f"cluster {c['cluster']:>2} ({c['size']:>4} rows): {c['name']}")
    print(f"{summary['rows']} rows, k={summary['k']} (silhouette {summary['silhouette']}), "
          f"{summary['outliers']} outliers, {wall:.1f} s wall (stages: {summary['seconds']})")
    print(json.dumps({"benchmark": "analysis_gsm8k", "rows": summary["rows"], "wall_seconds": round(wall, 1),
                      "stages": summary["seconds"], "k": summary["k"], "silhouette": summary["silhouette"],
                      "goal_seconds": 240, "cluster_names": [c["name"] for c in clusters]}))


if __name__ == "__main__":
    main()
