"""bench/hotpath_bench.py runs, with the defaults and with a gossip setting
(`--gossip-opt eager_push=false`: a first push is applied, its forward waits
for a round), and reports every case. A smoke test: it times nothing."""

from __future__ import annotations

import json

import pytest

from bench import hotpath_bench


@pytest.mark.parametrize(
    ("opts", "first_push"),
    [
        ([], "push receive, first (applies, forwards)"),
        (["--gossip-opt", "eager_push=false"], "push receive, first (applies)"),
    ],
)
def test_the_hot_path_bench_reports_every_case(
    opts: list[str], first_push: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--nodes", "12", "--count", "3", "--repeats", "1", "--json", *opts]
    assert hotpath_bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["us_per_message"]
    assert first_push in rows
    assert {"heartbeat receive", "push receive, duplicate", "ack receive"} <= set(rows)
    assert all(us > 0 for us in rows.values())
    assert out["gossip_opts"] == ({"eager_push": "false"} if opts else {})
