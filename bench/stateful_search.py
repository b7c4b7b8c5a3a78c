"""Deep search with the stateful cluster machine (tests/sim/test_stateful.py).

    flock /work/bench.lock .venv/bin/python bench/stateful_search.py    # 10,000 examples
    .venv/bin/python bench/stateful_search.py --examples 500 --steps 50 --json

Runs the machine CI runs 200 times, here `--examples` times with up to
`--steps` rules each, without Hypothesis's example database (every example is
new). A failure is shrunk and printed as a step-by-step schedule with the
simulator seed (`seed=...`) and Hypothesis's `@reproduce_failure` blob; the
exit code is then 1. Reported: examples run, wall time, and how often the
interesting things happened (acknowledged writes, writes lost with every copy
of them, refused writes, groups that could not find each other).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402

import tests.sim.test_stateful as machine  # noqa: E402
from bench.common import say  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=50, help="rules per example at most")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    seen: Counter[str] = Counter()  # examples in which each event happened
    current: set[str] = set()
    runs = [0]
    real_event = machine.event

    def count(value: object, payload: object = "") -> None:
        current.add(str(value))
        real_event(value, payload)  # type: ignore[arg-type]

    class Counted(machine.ClusterMachine):
        def teardown(self) -> None:
            try:
                super().teardown()
            finally:
                runs[0] += 1
                seen.update(current)
                current.clear()
                if runs[0] % 500 == 0:
                    say(f"{runs[0]} examples, {time.time() - t0:.0f} s")

    machine.event = count  # type: ignore[assignment]
    config = settings(
        max_examples=args.examples,
        stateful_step_count=args.steps,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    t0 = time.time()
    failure = None
    try:
        run_state_machine_as_test(Counted, settings=config)
    except Exception as e:  # the shrunk failure; Hypothesis printed its steps
        failure = f"{type(e).__name__}: {e}"
    wall = time.time() - t0
    report = {
        "examples": runs[0],
        "max_steps": args.steps,
        "wall_s": round(wall, 1),
        "ms_per_example": round(1000 * wall / max(runs[0], 1), 1),
        "failure": failure,
        "events": {k: v for k, v in sorted(seen.items()) if not k.startswith("Retried")},
    }
    print(json.dumps(report, indent=None if args.json else 1))
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
