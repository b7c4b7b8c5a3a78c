"""Print `rumor sim` trace hashes for a fixed set of runs, to show that a
change did not alter the protocol's behaviour (same seed, same messages).

    .venv/bin/python bench/trace_hashes.py > before.txt   # then after a change:
    .venv/bin/python bench/trace_hashes.py | diff before.txt -
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = {
    "lossy-kill": ["--nodes", "30", "--loss", "0.1", "--kill-at", "10", "--duration", "40"],
    "faults": ["--scenario", str(ROOT / "bench" / "scenarios" / "faults.toml")],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3")
    args = ap.parse_args(argv)
    for seed in args.seeds.split(","):
        for name, flags in RUNS.items():
            out = subprocess.run(
                [sys.executable, "-m", "node.cli", "sim", *flags, "--seed", seed, "--json"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            print(name, seed, json.loads(out.stdout)["trace_hash"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
