"""bench/gpu_check.sh --smoke: the GPU verification's steps on the CPU (synthetic data, 1 epoch each): every run
finishes and the summary has one row per run with its accuracy, wall time and throughput."""
import json
import os
import subprocess
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow  # end-to-end: processes, kernels, whole runs

REPO = Path(__file__).resolve().parents[1]


def test_smoke_mode_runs_every_run_and_writes_the_summary(tmp_path):
    p = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke"], cwd=REPO, env={**os.environ, "OUT": str(tmp_path)},
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(r["run"] for r in rows) == ["S10", "S7", "S8", "S9-prescaled-residual", "S9-spec-seed1",
                                              "S9-spec-seed2", "S9-spec-seed3"]
    for r in rows:
        assert r["epochs"] == 1 and 0 <= r["test_acc"] <= 100 and r["wall_seconds"] > 0 and r["train_img_per_s"] > 0
        assert (tmp_path / "runs" / r["run"] / "report.md").exists()
    md = (tmp_path / "summary.md").read_text()
    assert md.count("\n| S") == 7 and "S9 spec over 3 seeds:" in md
