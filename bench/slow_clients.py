"""Slow clients from many addresses against a running `moe serve` (loopback only, bounded).

Attackers: N connections spread over 127.0.0.2.. (ADDRESSES of them), each sending either half a
request head (`heads`) or a whole head declaring a 4,000-byte body and then one body byte a second
(`bodies`), reconnecting whenever the server closes it (after 0.1 s when refused with a 503).
Meanwhile a real client from 127.0.0.100, in a process of its own, sends one request per fresh
connection (classify and /healthz alternately). Prints one JSON line:
how many real requests were answered 200, sent, and their p50 / p99 latency.

    python bench/slow_clients.py --port 8080 --mode heads --clients 200 --addresses 8 --seconds 12
"""

import argparse
import asyncio
import json
import multiprocessing
import socket
import time

BODY = b'{"text": "how to pack for a long trip"}'
REAL = {
    "classify": b"POST /classify HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    + b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(BODY)
    + BODY,
    "healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
}
SLOW = {
    "heads": b"POST /classify HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    "bodies": b"POST /classify HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    + b"content-length: 4000\r\n\r\n{",
}


async def hold(port: int, ip: str, mode: str, until: float) -> None:
    """One attacker: connect, send its slow start, hold until closed; again until `until`."""
    while time.monotonic() < until:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
            w.write(SLOW[mode])
            await w.drain()
        except OSError:
            await asyncio.sleep(0.02)
            continue
        while time.monotonic() < until:
            try:
                got = await asyncio.wait_for(r.read(1024), 1.0)
                if not got:
                    break
                if got.startswith(b"HTTP/1.1 503"):
                    await asyncio.sleep(0.1)
                    break
            except asyncio.TimeoutError:
                if mode == "bodies":
                    try:
                        w.write(b" ")
                        await w.drain()
                    except OSError:
                        break
            except OSError:
                break
        w.close()


def real(port: int, until: float, out: multiprocessing.Queue) -> None:
    """Fresh-connection requests from 127.0.0.100 until `until`, in a process of its own (so that
    its latencies are the server's, not the attackers' event loop's): (answered 200, latencies)."""
    ok, took = 0, []
    while time.monotonic() < until:
        req = REAL["classify" if len(took) % 2 == 0 else "healthz"]
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=("127.0.0.100", 0)) as s:
                s.sendall(req)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            ok += answer.startswith(b"HTTP/1.1 200")
        except OSError:
            pass
        took.append(time.monotonic() - started)
    out.put((ok, took))


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, int(round(q * len(xs))) - 1))] if xs else float("nan")


async def main(a: argparse.Namespace) -> dict:
    until = time.monotonic() + a.seconds
    ips = [f"127.0.0.{2 + i % a.addresses}" for i in range(a.clients)]
    attackers = [asyncio.create_task(hold(a.port, ip, a.mode, until)) for ip in ips]
    await asyncio.sleep(a.warmup)
    results: multiprocessing.Queue = multiprocessing.Queue()
    client = multiprocessing.Process(target=real, args=(a.port, until, results))
    client.start()
    await asyncio.gather(*attackers)
    ok, took = await asyncio.to_thread(results.get)
    client.join()
    return {
        "mode": a.mode,
        "clients": a.clients,
        "addresses": a.addresses,
        "answered": ok,
        "sent": len(took),
        "answered_pct": round(100 * ok / max(1, len(took)), 2),
        "p50_ms": round(1e3 * quantile(took, 0.5), 2),
        "p99_ms": round(1e3 * quantile(took, 0.99), 2),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--mode", choices=sorted(SLOW), default="heads")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--addresses", type=int, default=8)
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--warmup", type=float, default=2, help="seconds of attack before real requests")
    print(json.dumps(asyncio.run(main(p.parse_args()))))
