"""A remote engine's load, from its own Prometheus `/metrics`, as `EngineStats`.

Names (all vLLM metrics carry a `model_name` label, the first served name;
data-parallel engines add `engine`):

- running: `vllm:num_requests_running` (gauge) / `sglang:num_running_reqs`
- waiting: `vllm:num_requests_waiting` / `sglang:num_queue_reqs`
- KV usage, 0..1: `vllm:kv_cache_usage_perc` (older `vllm:gpu_cache_usage_perc`)
  / `sglang:token_usage`; `kv_blocks_total` from the `num_gpu_blocks` label of
  `vllm:cache_config_info` when present
- prefix_cache_queries / hits: counters `vllm:prefix_cache_queries` /
  `vllm:prefix_cache_hits` (tokens); SGLang has only a ratio,
  `sglang:cache_hit_rate` (`ScrapedLoad.cache_hit_rate`)
- prompt / generation tokens: `vllm:prompt_tokens`, `vllm:generation_tokens`
  / `sglang:prompt_tokens`, `sglang:generation_tokens`; preemptions:
  `vllm:num_preemptions`; tokens_per_s: the rate of the token counters
  over 5 s (vLLM) / `sglang:gen_throughput`

prometheus_client writes a counter `x` as samples `x_total` (and `x_created`)
and, in the 0.0.4 text format, its HELP/TYPE lines as `x_total`; older
exporters write `x` alone. Both are accepted.

Parsing is prometheus_client's (`text_string_to_metric_families`), never by
hand, but only over the lines of the families wanted: vLLM's /metrics is tens
of kilobytes of histograms, and parsing it all every 0.2 s would cost a core
a few percent per engine (bench/remote_engine_bench.py measures both). Each
family is parsed on its own, so one malformed family loses only itself.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from ..llm.params import EngineStats
from ..llm.rate import RateMeter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricNames:
    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_usage: tuple[str, ...]  # first present wins (the newer name first)
    cache_info: str  # a gauge whose labels describe the cache ("" = none)
    prefix_queries: str
    prefix_hits: str
    hit_rate: str
    prompt_tokens: str
    generation_tokens: str
    preemptions: str
    throughput: str


VLLM = MetricNames(
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    cache_info="vllm:cache_config_info",
    prefix_queries="vllm:prefix_cache_queries",
    prefix_hits="vllm:prefix_cache_hits",
    hit_rate="",
    prompt_tokens="vllm:prompt_tokens",
    generation_tokens="vllm:generation_tokens",
    preemptions="vllm:num_preemptions",
    throughput="",
)
SGLANG = MetricNames(
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_usage=("sglang:token_usage",),
    cache_info="",
    prefix_queries="",
    prefix_hits="",
    hit_rate="sglang:cache_hit_rate",
    prompt_tokens="sglang:prompt_tokens",
    generation_tokens="sglang:generation_tokens",
    preemptions="",
    throughput="sglang:gen_throughput",
)
NAMES_BY_KIND = {"vllm": VLLM, "sglang": SGLANG}


@dataclass(frozen=True)
class ScrapedLoad:
    """One scrape; None where the metric was missing or malformed (see `problems`)."""

    running: int | None = None
    waiting: int | None = None
    kv_usage: float | None = None  # fraction of the KV cache in use, 0..1
    kv_blocks_total: int | None = None
    prefix_cache_queries: int | None = None
    prefix_cache_hits: int | None = None
    cache_hit_rate: float | None = None
    prompt_tokens: int | None = None
    generation_tokens: int | None = None
    preemptions: int | None = None
    tokens_per_s: float | None = None
    engine_block_size: int | None = None  # vllm:cache_config_info's block_size
    prefix_hash_algo: str | None = None  # ... and prefix_caching_hash_algo
    problems: tuple[str, ...] = ()  # one line per missing or malformed metric


def parse_metrics(text: str, names: MetricNames, served_name: str) -> ScrapedLoad:
    """Read the load from Prometheus text; never raises on bad text."""
    wanted = [*names.running, *names.waiting, *names.kv_usage]
    wanted += [n for n in (names.cache_info, names.prefix_queries, names.prefix_hits,
                           names.hit_rate, names.prompt_tokens, names.generation_tokens,
                           names.preemptions, names.throughput) if n]
    samples, problems = _samples(text, wanted)
    problems = list(problems)

    def value(name: str, required: bool = True) -> float | None:
        if not name:
            return None
        got = _pick(samples, name, served_name)
        if got is None:
            if required:
                problems.append(f"{name} is missing")
            return None
        if not math.isfinite(got) or got < 0:
            problems.append(f"{name} has the value {got}")
            return None
        return got

    def first(candidates: tuple[str, ...]) -> float | None:
        for n in candidates:
            if _pick(samples, n, served_name) is not None:
                return value(n)
        problems.append(f"{' / '.join(candidates)} is missing")
        return None

    running = first(names.running)
    waiting = first(names.waiting)
    usage = first(names.kv_usage)
    if usage is not None and usage > 1.0:  # a percentage where a fraction is meant
        problems.append(f"{names.kv_usage[0]} = {usage} is not a fraction")
        usage = None
    info = _info_labels(samples, names.cache_info) if names.cache_info else {}
    return ScrapedLoad(
        running=_int(running),
        waiting=_int(waiting),
        kv_usage=usage,
        kv_blocks_total=int(info["num_gpu_blocks"]) if info.get("num_gpu_blocks", "").isdigit()
        else None,
        prefix_cache_queries=_int(value(names.prefix_queries)),
        prefix_cache_hits=_int(value(names.prefix_hits)),
        cache_hit_rate=value(names.hit_rate, required=False),
        prompt_tokens=_int(value(names.prompt_tokens, required=False)),
        generation_tokens=_int(value(names.generation_tokens, required=False)),
        preemptions=_int(value(names.preemptions, required=False)),
        tokens_per_s=value(names.throughput, required=False),
        engine_block_size=int(info["block_size"]) if info.get("block_size", "").isdigit()
        else None,
        prefix_hash_algo=info.get("prefix_caching_hash_algo"),
        problems=tuple(problems),
    )


# family name -> [(labels, value)] of its plain samples (counter `_total` folded in)
_Samples = Mapping[str, list[tuple[dict[str, str], float]]]


def _samples(text: str, wanted: list[str]) -> tuple[_Samples, list[str]]:
    prefixes = tuple(wanted)
    groups: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        bare = line[7:] if line.startswith(("# HELP ", "# TYPE ")) else line
        if bare.startswith(prefixes):
            groups[_family_of(bare, prefixes)].append(line)
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    problems: list[str] = []
    for family, lines in groups.items():
        try:
            for fam in text_string_to_metric_families("\n".join(lines) + "\n"):
                for s in fam.samples:
                    base = s.name.removesuffix("_total")
                    if base == family or s.name == family:
                        out[family].append((dict(s.labels), float(s.value)))
        except Exception as e:  # the parser raises ValueError, IndexError, ... on garbage
            problems.append(f"{family} is malformed ({type(e).__name__}: {e})"[:200])
            out.pop(family, None)
    return out, problems


def _family_of(line: str, prefixes: tuple[str, ...]) -> str:
    """The wanted name a line belongs to (the longest matching one)."""
    return max((p for p in prefixes if line.startswith(p)), key=len)


def _pick(samples: _Samples, name: str, served_name: str) -> float | None:
    """The value for this engine: the samples labelled with our served name if
    any (one engine may export several models' series), else all of them;
    summed over data-parallel engines (a usage ratio is averaged)."""
    rows = samples.get(name)
    if not rows:
        return None
    mine = [v for labels, v in rows if labels.get("model_name") == served_name]
    values = mine or [v for _labels, v in rows]
    if name.endswith(("_perc", "usage", "_rate")):
        return sum(values) / len(values)
    return sum(values)


def _info_labels(samples: _Samples, name: str) -> dict[str, str]:
    """The labels of an info-style gauge (the first series)."""
    rows = samples.get(name)
    return dict(rows[0][0]) if rows else {}


def _int(v: float | None) -> int | None:
    return None if v is None else round(v)


#: kv_blocks_total when the engine does not say how many blocks it has: the
#: usage fraction is kept to 0.01% as used / USAGE_SCALE.
USAGE_SCALE = 10_000


class LoadTracker:
    """Scrapes in, `EngineStats` out, with a fallback for what is missing.

    A field the engine did not report falls back: `running` to the daemon's
    own count of requests in flight to this engine (`inflight()`), `waiting`
    and the counters to 0, the KV cache to 0 used of 0 (`kv_cache_usage` 0.0:
    unknown). Each problem is logged once when it appears (and once when it
    clears), not per scrape."""

    def __init__(
        self,
        names: MetricNames | None,
        served_name: str,
        inflight: Callable[[], int],
        label: str,
    ) -> None:
        self.names = names
        self.served_name = served_name
        self.inflight = inflight
        self.label = label
        self.latest = ScrapedLoad(problems=("not scraped yet",))
        self._logged: set[str] = set()
        self._rate = RateMeter()

    @property
    def problems(self) -> tuple[str, ...]:
        return self.latest.problems

    def update(self, text: str | None, error: str, now: float) -> None:
        if text is None or self.names is None:
            self.latest = ScrapedLoad(problems=(f"no metrics: {error or 'not scraped'}",))
        else:
            self.latest = parse_metrics(text, self.names, self.served_name)
        tokens = self.latest.generation_tokens
        if tokens is not None and self.latest.prompt_tokens is not None:
            self._rate.observe(now, tokens + self.latest.prompt_tokens)
        self._report(self.latest.problems)

    def _report(self, problems: tuple[str, ...]) -> None:
        keys = {p.split(":")[0] if p.startswith("no metrics") else p for p in problems}
        for p in sorted(keys - self._logged):
            log.warning("engine %s load: %s; falling back to the daemon's in-flight count "
                        "where needed", self.label, p)
        for p in sorted(self._logged - keys):
            log.info("engine %s load: resolved: %s", self.label, p)
        self._logged = keys

    def stats(self, now: float) -> EngineStats:
        s = self.latest
        total = used = 0
        if s.kv_usage is not None:
            total = s.kv_blocks_total or USAGE_SCALE
            used = round(s.kv_usage * total)
        rate = s.tokens_per_s if s.tokens_per_s is not None else self._rate.rate(now)
        return EngineStats(
            running=s.running if s.running is not None else self.inflight(),
            waiting=s.waiting or 0,
            kv_blocks_used=used,
            kv_blocks_total=total,
            prefix_cache_queries=s.prefix_cache_queries or 0,
            prefix_cache_hits=s.prefix_cache_hits or 0,
            prompt_tokens=s.prompt_tokens or 0,
            generation_tokens=s.generation_tokens or 0,
            preemptions=s.preemptions or 0,
            tokens_per_s=rate,
        )
