"""A stand-in node for the /ui page at scale: the real static files, a
100-member `GET /v1/cluster` that changes on every read, and a `GET /v1/events`
stream of bursts. Run as a process by tests/e2e/test_ui_scale.py:

    python -m tests.e2e.fake_cluster --members 100 --lost-after 300 --drop-after 300

It prints one JSON line with its address, like `rumor node`. `GET /fake/stats`
says what the page did (when it read the view, when it opened streams);
`POST /fake/status/{member}/{status}` changes a member's status.

The view carries what the page must cope with: suspect and dead members, LLM
load fields (`kv_used`/`kv_total`) and a field no node sends today
(`prefix_hit_rate`), a `completed` counter at 10 requests/s per member, and
peer strings that are markup (HOSTILE).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from node.api.ui import ui_routes

#: A member name, a tag and a model name that would run script if rendered as HTML.
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
COMPLETED_PER_S = 10.0


class FakeCluster:
    def __init__(
        self, members: int, lost_after: int, drop_after: int, burst: int, burst_every: float
    ) -> None:
        self.names = [f"m{i:03d}" for i in range(members - 1)] + [HOSTILE]
        self.status = dict.fromkeys(self.names, "alive")
        self.status["m013"] = "suspect"
        self.status["m042"] = "dead"
        # The first stream ends with events-lost after `lost_after` events, the
        # second just ends (a drop) after `drop_after`; 0: never.
        self.ends = {1: ("lost", lost_after), 2: ("drop", drop_after)}
        self.burst, self.burst_every = burst, burst_every
        self.t0 = time.monotonic()
        self.stats: dict[str, Any] = {
            "reads": 0,
            "read_times": [],  # seconds since start, the last 200
            "stream_opened": [],  # seconds since start, per stream
            "stream_ended": [],  # [how, seconds since start]
            "events_sent": 0,
        }

    def member(self, i: int, name: str, seq: int, now: float) -> dict[str, Any]:
        models: dict[str, Any] = {"llama": {"state": "ready", "max_batch": 32}}
        if i % 10 == 0:
            models["mlp"] = {"state": "loading" if i % 20 else "ready"}
        if name == HOSTILE:
            models[HOSTILE] = {"state": "ready"}
        return {
            "name": name,
            "status": self.status[name],
            "generation": 1000 + i,
            "incarnation": i % 3,
            "gossip": f"10.0.{i // 250}.{i % 250}:7946",
            "http": f"10.0.{i // 250}.{i % 250}:8000",
            "models": models,
            "load": {
                "queue": (seq + i) % 7,
                "in_flight": i % 4,
                "ewma_latency": 0.01 * (1 + i % 5),
                "throughput": float(COMPLETED_PER_S),
                "memory": {"used": (i % 8) << 30, "free": (80 - i % 8) << 30},
                "kv_used": (seq * 37 + i * 11) % 4096,
                "kv_total": 4096,
                "prefix_hit_rate": round((i % 10) / 10, 2),
                "completed": int(COMPLETED_PER_S * now),
            },
            "device": {"type": "cuda", "name": "H100", "memory_total": 80 << 30},
            "tags": {"zone": f"z{i % 3}", "note": HOSTILE if name == HOSTILE else "ok"},
            "age_s": round((seq + i) % 10 / 10, 3),
            "evidence": {"last_heard_s": 0.1, "status_since_s": 30.0},
        }

    def view(self) -> dict[str, Any]:
        seq, now = self.stats["reads"] + 1, time.monotonic() - self.t0
        self.stats["reads"] = seq
        self.stats["read_times"] = [*self.stats["read_times"][-199:], now]
        members = [self.member(i, n, seq, now) for i, n in enumerate(self.names)]
        alive = [m["name"] for m in members if m["status"] == "alive"]
        return {
            "self": self.names[0],
            "generation": 1000,
            "members": members,
            "placement": {
                "llama": {"target": len(self.names), "assigned": self.names, "ready": alive},
                "mlp": {"target": 3, "assigned": self.names[:3], "ready": self.names[:1]},
            },
        }

    async def events(self) -> Any:
        self.stats["stream_opened"].append(time.monotonic() - self.t0)
        how, end_after = self.ends.get(len(self.stats["stream_opened"]), ("", 0))
        yield ": fake events\n\n"
        sent = 0
        while True:
            # A burst: one member-update per member, the way 100 nodes publishing
            # their load every interval look from one node.
            for j in range(self.burst):
                name = self.names[(sent + j) % len(self.names)]
                item = {
                    "type": "member-update",
                    "member": name,
                    "time": time.time(),
                    "keys": ["load"],
                }
                yield f"data: {json.dumps(item)}\n\n"
            sent += self.burst
            self.stats["events_sent"] += self.burst
            if end_after and sent >= end_after:
                if how == "lost":
                    yield f"data: {json.dumps({'type': 'events-lost', 'time': time.time()})}\n\n"
                self.stats["stream_ended"].append([how, time.monotonic() - self.t0])
                return
            await trio.sleep(self.burst_every)


def build_app(fake: FakeCluster) -> Starlette:
    async def cluster(request: Request) -> Response:
        return JSONResponse(fake.view())

    async def events(request: Request) -> Response:
        return StreamingResponse(
            fake.events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    async def stats(request: Request) -> Response:
        return JSONResponse(fake.stats)

    async def set_status(request: Request) -> Response:
        name, status = request.path_params["member"], request.path_params["status"]
        if name not in fake.status:
            return JSONResponse({"error": f"no member {name!r}"}, status_code=404)
        fake.status[name] = status
        return JSONResponse({"member": name, "status": status})

    routes = [
        Route("/v1/cluster", cluster),
        Route("/v1/events", events),
        Route("/fake/stats", stats),
        Route("/fake/status/{member}/{status}", set_status, methods=["POST"]),
        *ui_routes(),
    ]
    return Starlette(routes=routes)


async def main(args: argparse.Namespace) -> None:
    fake = FakeCluster(args.members, args.lost_after, args.drop_after, args.burst, args.burst_every)
    config = HyperConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, build_app(fake), config)  # type: ignore[arg-type]
        print(json.dumps({"http": binds[0].removeprefix("http://")}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument(
        "--lost-after", type=int, default=0, help="end stream 1 with events-lost after N events"
    )
    parser.add_argument("--drop-after", type=int, default=0, help="end stream 2 after N events")
    parser.add_argument("--burst", type=int, default=100, help="events per burst")
    parser.add_argument("--burst-every", type=float, default=1.0, help="seconds between bursts")
    trio.run(main, parser.parse_args())
