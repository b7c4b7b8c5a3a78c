"""The optional compiled build: which modules mypyc compiles, where the
extension modules go, and how a package picks them up.

`make compiled` (`python setup.py build_mypyc`) compiles the modules listed
in COMPILED into build/mypyc/, and writes last a manifest of the hashes of
the sources it compiled. A package whose __init__ calls
`use_compiled(__name__, __path__)` then imports its compiled modules in place
of the .py files, unless:

- RUMOR_PURE=1 is set (CI runs the suite against both builds this way);
- there is no build (no C compiler, mypyc missing, the build failed);
- a source differs from the one compiled (edited since, another branch):
  a stale build is never run; it says so once and the pure modules run.

The sources stay plain, importable Python; the compiled build is only a
faster way to run the same code, and both produce the same bytes
(tests/gossip/test_builds.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "mypyc"
MANIFEST = "SOURCES.json"

#: Compiled modules per package: the protocol's pure core, the hot path of
#: every message. The runtime (gossip.transport: trio, sockets) and the
#: cold modules (config, events, errors) stay interpreted. Of crdt/, the two
#: modules every received message runs through: `unpack_limited` (codec) and
#: the value checks (_wire); its types stay interpreted for now (the
#: mutation check and tests/crdt/test_join_cost patch and count them).
#: sim.network, the simulator's event loop, is compiled too: it calls into the
#: core for every event (a quarter of a simulation's time, interpreted).
COMPILED: dict[str, tuple[str, ...]] = {
    "crdt": ("_wire", "codec"),
    "gossip": (
        "base",
        "broadcast",
        "clock",
        "core",
        "crypto",
        "detector",
        "live",
        "members",
        "messages",
        "state",
        "status",
        "sync",
        "wire",
    ),
    "sim": ("network",),
}


def _sources(package: str) -> dict[str, str]:
    """sha256 of each compiled module's source, by module name: the package's
    own and, as `pkg.mod`, every other compiled package's. A build is used
    whole or not at all: compiled code of one package calls the compiled
    classes of another directly, so a stale one makes both stale."""
    out = {}
    for pkg, mods in COMPILED.items():
        for mod in mods:
            data = (ROOT / pkg / f"{mod}.py").read_bytes()
            out[mod if pkg == package else f"{pkg}.{mod}"] = hashlib.sha256(data).hexdigest()
    return out


def pure_requested() -> bool:
    return os.environ.get("RUMOR_PURE", "") not in ("", "0")


def use_compiled(package: str, path: list[str]) -> list[str]:
    """The package's __path__, with its compiled build first if it is usable."""
    compiled = BUILD / package
    if pure_requested() or package not in COMPILED or not compiled.is_dir():
        return path
    try:
        built = json.loads((compiled / MANIFEST).read_text())
    except (OSError, ValueError):
        return path  # a build that did not finish
    if built.get("python") != sys.implementation.cache_tag or built.get("sources") != _sources(
        package
    ):
        warnings.warn(
            f"the compiled build of {package} is stale (its sources changed): running the "
            "pure-Python modules; `make compiled` rebuilds it",
            RuntimeWarning,
            stacklevel=2,
        )
        return path
    return [str(compiled), *path]


def is_compiled(module: object) -> bool:
    """True if `module` was loaded from a compiled extension."""
    return not str(getattr(module, "__file__", "")).endswith(".py")


def build() -> int:
    """Compile COMPILED into BUILD; 0 on success. It builds beside BUILD and
    swaps it in at the end, so a process starting meanwhile sees the old
    build or the new one, never half of one. On failure nothing usable is
    left behind (no manifest), so the pure modules run, and it says why."""
    staging = BUILD.with_name(BUILD.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        from mypyc.build import mypycify
        from setuptools import setup

        groups: list[tuple[list[str], str | None]] = [
            ([f"{pkg}/{mod}.py" for mod in mods], f"{pkg}._compiled")
            for pkg, mods in COMPILED.items()
        ]
        extensions = mypycify(
            [p for paths, _ in groups for p in paths],
            opt_level="3",
            separate=groups,  # one shared library per package
            target_dir=str(ROOT / "build" / "mypyc-c"),
        )
        setup(
            ext_modules=extensions,
            script_args=[
                "--quiet",
                "build_ext",
                "--build-lib",
                str(staging),
                "--build-temp",
                str(ROOT / "build" / "mypyc-tmp"),
            ],
        )
    except (Exception, SystemExit) as e:  # setuptools exits on a compiler error
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(BUILD, ignore_errors=True)
        print(
            f"compiled build failed ({type(e).__name__}: {e}); the pure-Python modules "
            "will run (same behaviour, slower)",
            file=sys.stderr,
        )
        return 1
    for package in COMPILED:
        manifest = {"python": sys.implementation.cache_tag, "sources": _sources(package)}
        (staging / package / MANIFEST).write_text(json.dumps(manifest, indent=1))
    old = BUILD.with_name(BUILD.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if BUILD.exists():
        BUILD.rename(old)
    staging.rename(BUILD)
    shutil.rmtree(old, ignore_errors=True)
    print(f"compiled build ready in {BUILD.relative_to(ROOT)}", file=sys.stderr)
    return 0
