"""What `aigc validate` and `aigc --help` cost, against what importing torch and Ray alone costs.

    .venv/bin/python benchmarks/cli_startup.py [--runs 7]

The CLI imports only the spec layer (pydantic, yaml, the families' torch-free declarations); each
command imports its stage inside the command. Baselines measured in the same run, paired run by
run: a bare interpreter (the floor) and `import torch, ray` (what every command paid before the
families issue). Prints medians and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIGC = str(Path(sys.executable).with_name("aigc"))
COMMANDS = {
    "aigc validate jobs/demo.yaml": [AIGC, "validate", "jobs/demo.yaml"],
    "aigc --help": [AIGC, "--help"],
    "python (bare interpreter)": [sys.executable, "-c", "pass"],
    "python -c 'import torch, ray'": [sys.executable, "-c", "import torch, ray"],
}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    for cmd in COMMANDS.values():  # warm the file cache
        wall(cmd)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.runs):  # interleaved, so drift hits every command alike
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    bare, heavy = med["python (bare interpreter)"], med["python -c 'import torch, ray'"]
    print(f"{'command':<34} {'median s':>9} {'/ bare python':>14} {'/ import torch, ray':>20}")
    for name, m in med.items():
        print(f"{name:<34} {m:>9.3f} {m / bare:>13.2f}x {m / heavy:>19.2f}x")
    ok = med["aigc validate jobs/demo.yaml"] < 1.0
    print(f"target: aigc validate under 1 s of wall time: {'met' if ok else 'NOT met'} "
          f"({med['aigc validate jobs/demo.yaml']:.3f} s)")


if __name__ == "__main__":
    main()
