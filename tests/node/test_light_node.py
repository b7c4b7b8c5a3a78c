"""A node without models must not pay for torch (~150 MB and ~1.5 s per process);
one with an NVIDIA device probes it (with torch). The device is faked both
ways, so the expectation is the same on every machine."""

import subprocess
import sys

PROBE = (
    "import glob, sys\n"
    "real = glob.glob\n"
    "glob.glob = lambda p, *a, **k: {devices!r} if 'nvidia' in p else real(p, *a, **k)\n"
    "import node.daemon, node.api.app, node.commands, inference.service\n"
    "from node.daemon import device_info\n"
    "info = device_info()\n"
    "print('torch' in sys.modules, info['type'])\n"
)


def probe(devices: list[str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(devices=devices)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.split()


def test_daemon_modules_do_not_import_torch_without_an_nvidia_device() -> None:
    assert probe([]) == ["False", "cpu"]


def test_an_nvidia_device_is_probed_with_torch() -> None:
    imported, kind = probe(["/dev/nvidia0"])
    assert imported == "True"
    assert kind in ("cpu", "cuda")  # cpu when the driver cannot be used
