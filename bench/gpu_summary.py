"""The summary of bench/gpu_check.sh: one row per run folder under RUNS (run, test accuracy, wall seconds,
train img/s, device, torch version), written as summary.json and summary.md into OUT.

    python bench/gpu_summary.py RUNS OUT
"""
import json
import statistics
import sys
from pathlib import Path


def rows(runs: Path) -> list[dict]:
    out = []
    for m_path in sorted(runs.glob("*/metrics.json")):
        m = json.loads(m_path.read_text())
        h = m["history"]
        train_images = len(h) and m["history"][-1]["step"] * (m["config"].get("batch_size") or m["recipe"]["batch_size"])
        epoch_seconds = sum(e["seconds"] for e in h)
        out.append({"run": m_path.parent.name, "name": m["name"], "epochs": len(h), "test_acc": m["final_test_acc"],
                    "wall_seconds": m["wall_seconds"], "train_img_per_s": round(train_images / epoch_seconds) if epoch_seconds else None,
                    "device": m["device"], "precision": m["precision"], "torch": m["torch"], "data": m["data"],
                    "commands": m["commands"]})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| run | epochs | test accuracy | wall time | train img/s (epochs incl. test) | device | precision | torch |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['epochs']} | {r['test_acc']:.2f}% | {r['wall_seconds']:.1f} s | {r['train_img_per_s']:,} | "
              f"{r['device']} | {r['precision']} | {r['torch']} |" for r in table]
    spec = [r["test_acc"] for r in table if r["run"].startswith("S9-spec-seed")]
    if len(spec) > 1:
        lines += ["", f"S9 spec over {len(spec)} seeds: {statistics.mean(spec):.2f} +- {statistics.stdev(spec):.2f}% "
                      f"({', '.join(f'{a:.2f}' for a in spec)})"]
    if table:
        lines += ["", f"Data: {table[0]['data']}."]
    return "\n".join(lines) + "\n"


def main(runs: str, out: str) -> int:
    table = rows(Path(runs))
    Path(out, "summary.json").write_text(json.dumps(table, indent=1))
    Path(out, "summary.md").write_text(markdown(table))
    print(markdown(table))
    return 0 if table else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
