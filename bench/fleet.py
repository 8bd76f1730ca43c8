"""Fleet convergence: how long after a swap is accepted by one replica every replica serves it.

Starts etcd and three replicas with scripts/fleet.sh (the default experts of models/, shared),
then swaps Travel back and forth, each time on a random replica, and polls every replica's
/readyz until all serve the swap's registry revision. Two kinds of swap: a head on the trunk
every replica already runs (kd19-logreg <-> global-ft19-logreg) and one that brings its own trunk
(global-frozen-logreg, a second 23 MB MiniLM: loaded and warmed on every replica). Rounds run idle
and under classify load spread over the three replicas (wrk, one process per replica), all on
this machine's cores. Writes docs/bench/fleet.json.

    .venv/bin/python bench/fleet.py [--swaps 60] [--out docs/bench/fleet.json]
"""

import argparse
import csv
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
HEAD = ("travel--kd19-logreg", "travel--global-ft19-logreg")
TRUNK = ("travel--kd19-logreg", "travel--global-frozen-logreg")


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def revision(base: str) -> int | None:
    try:
        return http("GET", f"{base}/readyz")[1].get("revision")
    except OSError:
        return None


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict:
    return {
        "n": len(xs),
        "p50": statistics.median(xs),
        "p99": percentile(xs, 0.99),
        "max": max(xs),
        "all": [round(x, 2) for x in xs],
    }


def swap_rounds(bases: list[str], bundles: tuple[str, str], n: int, rng: random.Random) -> dict:
    """n swaps of Travel, each to a random replica; per swap the PUT round trip and the time from
    the PUT's answer (accepted) to every replica serving its revision, in ms."""
    put_ms, converge_ms, from_send_ms = [], [], []
    for i in range(n):
        target = bundles[(i + 1) % 2]
        base = rng.choice(bases)
        t0 = time.perf_counter()
        status, v = http("PUT", f"{base}/experts/Travel", {"bundle": target})
        t1 = time.perf_counter()
        if status != 200:
            raise SystemExit(f"swap {i} on {base}: {status} {v}")
        rev, waiting = v["revision"], set(bases)
        while waiting:
            waiting = {b for b in waiting if (revision(b) or 0) < rev}
            if waiting:
                time.sleep(0.002)
            if time.perf_counter() - t1 > 30:
                raise SystemExit(f"swap {i}: {waiting} not at revision {rev} after 30 s")
        t2 = time.perf_counter()
        put_ms.append((t1 - t0) * 1e3)
        converge_ms.append((t2 - t1) * 1e3)
        from_send_ms.append((t2 - t0) * 1e3)
    return {
        "put_round_trip_ms": summary(put_ms),
        "accepted_to_all_serving_ms": summary(converge_ms),
        "sent_to_all_serving_ms": summary(from_send_ms),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=60)
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "fleet.json"))
    a = ap.parse_args()
    fleet_dir = tempfile.mkdtemp(prefix="moe-fleet-bench-")
    env = dict(
        os.environ,
        FLEET_DIR=fleet_dir,
        ETCD_PORT="23950",
        PORT0="18300",
        MOE_ADMIN_TOKEN=TOKEN,
        MOE_MODELS=str(REPO / "models"),
    )
    fleet = [str(REPO / "scripts" / "fleet.sh")]
    out = subprocess.run([*fleet, "up", "3"], env=env, capture_output=True, text=True, check=True).stdout
    bases = [line.split()[1] for line in out.splitlines() if line.startswith("replica-")]
    wrk = []
    try:
        rng = random.Random(7)
        result = {
            "replicas": len(bases),
            "machine": f"{os.cpu_count()} cores, etcd + replicas + load on the same cores",
        }
        result["idle_head_swap"] = swap_rounds(bases, HEAD, a.swaps, rng)
        result["idle_trunk_swap"] = swap_rounds(bases, TRUNK, max(10, a.swaps // 3), rng)
        texts = Path(fleet_dir) / "texts.txt"
        rows = csv.DictReader(open(REPO / "data" / "wikihow19_titles.csv"))
        texts.write_text("\n".join(r["title"] for r in rows if r["split"] == "test") + "\n")
        seconds = 600
        for b in bases:
            wrk.append(
                subprocess.Popen(
                    ["wrk", "-t", "1", "-c", "2", "-d", f"{seconds}s", "-s", str(REPO / "bench" / "classify.lua"), b],
                    env=dict(env, BENCH_TEXTS=str(texts)),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        time.sleep(2)
        result["loaded_head_swap"] = swap_rounds(bases, HEAD, a.swaps, rng)
        result["load"] = "wrk -t1 -c2 per replica (6 connections), single-title classify requests"
        for p in wrk:
            p.send_signal(signal.SIGINT)  # wrk stops and prints its summary line
        result["load_per_replica"] = []
        for p in wrk:
            last = p.communicate(timeout=30)[0].strip().splitlines()[-1:]
            stats = json.loads(last[0]) if last and last[0].startswith("{") else {}
            result["load_per_replica"].append(
                {k: stats.get(k) for k in ("requests", "requests_per_s", "p99_ms", "non_2xx", "socket_errors")}
            )
        # /fleet reads the replicas' announcements (refreshed every 250 ms): poll until it agrees.
        t0 = time.perf_counter()
        while True:
            status, fleet_status = http("GET", f"{bases[0]}/fleet")
            waited = time.perf_counter() - t0
            if fleet_status.get("converged") or waited > 10:
                break
            time.sleep(0.05)
        result["fleet_after"] = {
            "revision": fleet_status.get("revision"),
            "converged": fleet_status.get("converged"),
            "waited_ms": round(waited * 1e3),
            "replicas": [(r["id"], r["revision"], r["last_error"]) for r in fleet_status.get("replicas", [])],
        }
        print(json.dumps({k: v for k, v in result.items()}, indent=1)[:2000])
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        for p in wrk:
            p.kill()
        subprocess.run([*fleet, "down"], env=env, check=False)
        time.sleep(0.5)
        shutil.rmtree(fleet_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
