"""PNG plots of a simulation run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from .runner import Timeline


def plot_run(timeline: Timeline, nodes: int, out: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for key, points in sorted(timeline.informed.items(), key=lambda kv: int(kv[0][1:])):
        times = sorted(t for t, _ in points)
        if not times:
            continue
        first = times[0]
        xs = [first, *times]
        ys = [1 / nodes, *((i + 2) / nodes for i in range(len(times)))]
        top.step(xs, ys, where="post", label=key)
    top.set_ylabel("fraction of nodes informed")
    top.set_ylim(0, 1.05)
    if len(timeline.informed) <= 12:
        top.legend(loc="lower right", fontsize="small", ncol=2)
    top.set_title(title or f"rumor sim: {nodes} nodes")
    bottom.plot(timeline.t, timeline.bytes_per_node_per_s, linewidth=0.8)
    bottom.set_ylabel("bytes per node per second")
    bottom.set_xlabel("simulated time (s)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
