"""Export: the learned optimizers of a `learned_optimizer.py` run as the package's
pretrained optimizers (`rules/pretrained/<Class>.npz` + `<Class>.json`).

    python benchmarks/learned_optimizer.py --train-only --run-dir RUN --outer-steps 6000
    python benchmarks/learned_optimizer.py --run-dir RUN --outer-steps 6000 \\
        --out benchmarks/results/learned_optimizer_pretrained.md
    python benchmarks/export_pretrained.py --run-dir RUN \\
        --results benchmarks/results/learned_optimizer_pretrained.md

For each optimizer in `<run-dir>/<Class>/` (meta_train's checkpoint and the script's
`budget.json`), `rules.save_pretrained` writes its meta-parameters and a card whose
`info` holds the meta-training configuration (from the checkpoint), the outer steps
and seconds it took (from `budget.json`), and the evaluation of the `--results` file
written by `learned_optimizer.py` on the same run: its header (command, machine, load),
the median ratios against tuned Adam in and out of family, and each held-out task's
ratio. Then it loads each back with `<Class>.pretrained` (hash and shapes checked).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import numpy as np

from innerloop import rules

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("MLPLOpt", "RNNMLPLOpt")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of `text`: its rows of cells (header first, no rule)."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append(_cells(line))
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def evaluation(results: Path, name: str) -> dict:
    """What `learned_optimizer.py`'s results file says about optimizer `name`."""
    text = results.read_text()
    header = {}
    for line in text.splitlines():
        for key in ("command", "machine", "versions", "meta-training"):
            if line.startswith(f"- {key}: "):
                header[key] = line[len(f"- {key}: "):].strip("`")
    out = {"results_file": str(results.relative_to(ROOT) if results.is_absolute() and
                               ROOT in results.parents else results),
           **header}
    for rows in _tables(text):
        head = rows[0]
        if head[:2] == ["learned optimizer", "outer steps"]:
            for row in rows[1:]:
                if row[0] == name:
                    cell = dict(zip(head, row))
                    out["median_ratio_in_family"] = cell["median ratio in-family"]
                    out["median_ratio_out_of_family"] = cell["median ratio out of family"]
                    out["beats_adam_1e-3_out_of_family"] = cell[
                        "beats Adam 1e-3 on every out-of-family task"]
        column = f"{name}: tuned-Adam steps to match (ratio)"
        if head[:2] == ["task", "group"] and column in head:
            i = head.index(column)
            out["held_out"] = [{"task": row[0], "group": row[1],
                                "tuned_adam_steps_to_match (ratio)": row[i]}
                               for row in rows[1:]]
    for key in ("median_ratio_in_family", "held_out"):
        if key not in out:
            raise SystemExit(f"export_pretrained: {results} has no {key} for {name}; pass "
                             f"the results file learned_optimizer.py wrote for this run")
    return out


def info(run_dir: Path, name: str, results: Path | None) -> dict:
    ckpt = rules.load_checkpoint(str(run_dir / name))
    with open(run_dir / name / "budget.json") as f:
        budget = json.load(f)
    if int(budget["step"]) != ckpt.step:
        raise SystemExit(f"export_pretrained: {run_dir / name}: budget.json says step "
                         f"{budget['step']}, the checkpoint {ckpt.step}")
    config = ckpt.config
    families = config["family"] if isinstance(config["family"], list) else [config["family"]]
    out = {
        "source": "benchmarks/learned_optimizer.py (meta_train with PES)",
        "meta_trained_on": [
            f"{f['fields']['dataset']} MLP {f['fields']['depths'][0]}x"
            f"{f['fields']['widths'][0]} {f['fields']['activations'][0]}, batch "
            f"{f['fields']['batch_sizes'][0]}, init scale {f['fields']['init_scale']}"
            for f in families],
        "estimator": config["estimator"], "T": config["T"], "log_loss": config["log_loss"],
        "seed": config["seed"],
        "outer_steps": ckpt.step,
        "meta_training_seconds": round(float(budget["seconds"]), 1),
        "median_seconds_per_outer_step": round(float(np.median(budget["step_times"])), 4)
        if budget.get("step_times") else None,
        "meta_loss_last_250_mean": round(float(np.mean(ckpt.losses[-250:])), 4),
    }
    if results is not None:
        out["evaluation"] = evaluation(results, name)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True,
                    help="learned_optimizer.py's --run-dir (holds <Class>/checkpoint.npz)")
    ap.add_argument("--results", type=Path, default=None,
                    help="learned_optimizer.py's results file of the same run (its ratios "
                         "go on the card)")
    ap.add_argument("--out", type=Path, default=ROOT / "rules" / "pretrained",
                    help="where the files go (default rules/pretrained/, the package's)")
    ap.add_argument("--names", nargs="+", default=list(NAMES), choices=NAMES)
    cfg = ap.parse_args(argv)
    for name in cfg.names:
        ckpt = rules.load_checkpoint(os.fspath(cfg.run_dir / name))
        weights, card = rules.save_pretrained(cfg.out, ckpt.lopt, ckpt.meta_params,
                                              info(cfg.run_dir, name, cfg.results))
        lopt, meta = getattr(rules, name).pretrained(cfg.out)  # read back: hash, shapes
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ckpt.meta_params),
                                                        jax.tree.leaves(meta)))
        if not same or lopt != ckpt.lopt:
            raise SystemExit(f"export_pretrained: {weights} does not read back as written")
        print(f"{name}: step {ckpt.step} -> {weights} ({weights.stat().st_size} bytes), "
              f"{card}")


if __name__ == "__main__":
    main()
