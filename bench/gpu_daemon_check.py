"""GPU smoke check of the daemon: two real `rumor node` processes, one serving
both built-in models on cuda:0, one with none; a request sent to the second is
forwarded to the first. Run it on a GPU host:

    python bench/gpu_daemon_check.py
"""

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def spawn(name, join, models):
    cmd = [sys.executable, "-m", "node.cli", "node", "--name", name]
    for j in join:
        cmd += ["--join", j]
    for m in models:
        cmd += ["--model", m]
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=open(f"/tmp/{name}.log", "w"),  # noqa: SIM115 - the daemon keeps it
        text=True,
        start_new_session=True,
    )
    line = p.stdout.readline()
    if not line:
        p.wait()
        print(Path(f"/tmp/{name}.log").read_text()[-3000:])
        raise SystemExit(1)
    return p, json.loads(line)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, json.loads(r.read())


def post(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        print("HTTP", e.code, e.read()[:500])
        print(Path("/tmp/gpu-a.log").read_text()[-1500:])
        raise SystemExit(1) from None


a, ba = spawn(
    "gpu-a",
    [],
    [
        "mlp=builtin:mlp,device=cuda,max_batch_size=64",
        "transformer=builtin:transformer,device=cuda",
    ],
)
b, bb = spawn("cpu-b", [ba["gossip"]], [])
print(ba, bb)
for _ in range(300):
    try:
        s1, _ = get(f"http://{bb['http']}/v2/models/transformer/ready")
        s2, _ = get(f"http://{bb['http']}/v2/models/mlp/ready")
        if s1 == 200 and s2 == 200:
            break
    except Exception:
        pass
    time.sleep(0.2)
s, st = get(f"http://{ba['http']}/v1/cluster")
print([(m["name"], m["models"]) for m in st["members"]])
s, meta = get(f"http://{ba['http']}/v2/models/mlp")
print("meta", meta["device"], "cuda_graphs", meta["cuda_graphs"])
body = {"inputs": [{"name": "input", "shape": [2, 256], "datatype": "FP32", "data": [0.5] * 512}]}
s, h, out = post(f"http://{bb['http']}/v2/models/mlp/infer", body)
print("forwarded via cpu-b:", s, out["parameters"], out["outputs"][0]["shape"])
t = time.time()
n = 0
while time.time() - t < 3:
    post(
        f"http://{bb['http']}/v2/models/transformer/infer",
        {
            "inputs": [
                {"name": "input", "shape": [1, 32], "datatype": "INT64", "data": list(range(32))}
            ]
        },
    )
    n += 1
print("sequential transformer requests through the forward hop:", round(n / 3, 1), "req/s")
s, v = get(f"http://{bb['http']}/v1/cluster")
print([(m["name"], m["status"], m["device"], sorted(m["models"])) for m in v["members"]])
for p in (a, b):
    p.send_signal(signal.SIGTERM)
print("exit codes", a.wait(20), b.wait(20))
