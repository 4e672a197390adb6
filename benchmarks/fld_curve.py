"""FLD against training time: one run, evaluated after each of a list of epochs (issue 14's curve).

    RAY_worker_niceness=0 .venv/bin/python benchmarks/fld_curve.py jobs/fashion.yaml \
        --epochs 1 2 4 6 8 10 12 14 16 18 20 22 --samples 10000 --budget-s 3600

For each E in ``--epochs`` it runs ``aigc train JOB --set train.epochs=E``, which resumes the run from
its last checkpoint (the resume is bit-identical to one long run: tests/test_train.py), so the
points are those of a single run stopped at each E; then ``aigc evaluate`` measures that package at
``--samples`` N. Training time is the sum of the loop's own per-epoch seconds (the package's
``metrics``), without Ray's start-up or the evaluations. It stops after the first point past
``--budget-s`` of training.

Every point is evaluated against the same real-vs-real floor, measured by each evaluation (FLD / floor
is the ratio against that baseline). The domain classifier depends on the data, the split and the
seed but not on the model, so the one trained for the first point is copied beside each later
package (its folder is a published store with a manifest; ``aigc evaluate`` finds it by its key)
instead of being trained again for every point. Each point's figures go, as they come, to
``<storage.root>/fld-curve.jsonl`` (a rerun skips the points it has), and the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ROOT = Path(__file__).resolve().parents[1]
AIGC = [sys.executable, "-m", "pipeline"]


def aigc(*args: str) -> str:
    done = subprocess.run([*AIGC, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 3):  # 3: a gate failed, which is a figure here, not an error
        sys.exit(f"aigc {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def package_of(models: Path, epochs: int) -> Path:
    """The package trained for exactly ``epochs`` epochs (each E is its own train spec, so its own version)."""
    for meta in models.glob("*/model.json"):
        if json.loads(meta.read_text()).get("epochs") == epochs and (meta.parent / "_SUCCESS").exists():
            return meta.parent
    sys.exit(f"no package of {epochs} epochs under {models}")


def share_extractor(first: Path | None, pkg: Path) -> None:
    """Copy the first package's published extractor(s) beside ``pkg`` (same key: same data, split, seed)."""
    if first is None or first == pkg:
        return
    for src in (Path(f"{first}.eval") / "extractor").glob("*/_SUCCESS"):
        dst = Path(f"{pkg}.eval") / "extractor" / src.parent.name
        if not dst.exists():
            shutil.copytree(src.parent, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job")
    ap.add_argument("--epochs", type=int, nargs="+", required=True)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--budget-s", type=float, default=3600.0, help="stop after the first point past this training time")
    ap.add_argument("--root", default="/tmp/aigc-fld-curve", help="storage.root of the run (kept between reruns)")
    ap.add_argument("--extractor-from", default=None, help="a package whose published extractor to reuse")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    sets = ["--set", f"storage.root={root}", "--set", "train.checkpoint.keep=2"]
    out = root / "fld-curve.jsonl"
    done = {r["epochs"]: r for r in map(json.loads, out.read_text().splitlines())} if out.exists() else {}
    first = Path(args.extractor_from).resolve() if args.extractor_from else None
    for e in sorted(args.epochs):
        if e not in done:
            print(f"training to {e} epoch(s) ...", flush=True)
            aigc("train", args.job, *sets, "--set", f"train.epochs={e}")
            models = next(p for p in (root / "models").iterdir() if p.is_dir())
            pkg = package_of(models, e)
            share_extractor(first, pkg)
            print(f"evaluating {pkg.name} at N={args.samples:,} ...", flush=True)
            aigc("evaluate", str(pkg), "--job", args.job, *sets, "--samples", str(args.samples))
            res = json.loads((Path(f"{pkg}.eval") / f"n{args.samples}.json").read_text())
            meta = json.loads((pkg / "model.json").read_text())
            m, floor = res["metrics"]["model"], res["metrics"]["floor"]
            row = {"epochs": e, "train_s": round(sum(h["seconds"] for h in meta["metrics"]), 1),
                   "fld": m["fld"], "floor": floor["fld"], "ratio": m["fld"] / floor["fld"],
                   "precision": m["precision"], "recall": m["recall"], "floor_recall": floor["recall"],
                   "package": str(pkg), "eval_s": res.get("seconds")}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[e] = row
            first = first or pkg
        r = done[e]
        print(f"  {e:>3} epochs  {r['train_s']:>7,.0f} s  FLD {r['fld']:8.2f}  floor {r['floor']:.2f}  "
              f"{r['ratio']:7.1f}x  P {r['precision']:.3f}  R {r['recall']:.3f}", flush=True)
        if r["train_s"] > args.budget_s:
            break
    print(f"\n{'epochs':>6} {'training':>10} {'FLD':>8} {'floor':>6} {'FLD/floor':>10} {'precision':>10} {'recall':>7}")
    for e in sorted(done):
        r = done[e]
        print(f"{e:>6} {r['train_s'] / 60:>7.1f} min {r['fld']:>8.2f} {r['floor']:>6.2f} {r['ratio']:>9.1f}x "
              f"{r['precision']:>10.3f} {r['recall']:>7.3f}")


if __name__ == "__main__":
    main()
