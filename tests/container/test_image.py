"""The image as users run it: localhost/moe:dev (scripts/image.sh) started by podman.

- as shipped, with no volume and no env: ready, classifies, not root, healthy by its own
  HEALTHCHECK, and SIGTERM lets a request in flight finish before the process exits;
- with a named state volume and the admin token from a mounted file, a swap survives a restart;
- a fleet: one etcd container and three replicas on one models volume and one registry; a swap sent
  to one replica reaches all three, and one replica killed under load rejoins when started again
  while the other two answer every request.

Every container publishes its port on 127.0.0.1 only. The commands are those of docs/OPERATIONS.md
("Containers"), with -d, a name and a loopback port added. CONTAINERS_CONF defaults to
scripts/podman-sandbox.conf, the runtime and rlimits that this sandbox needs.
"""

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("MOE_IMAGE", "localhost/moe:dev")
ETCD = "localhost/moe-base/etcd:bookworm"
os.environ.setdefault("CONTAINERS_CONF", str(REPO / "scripts" / "podman-sandbox.conf"))
TAG = f"moe-test-{os.getpid()}"
TEXT = {"text": "How to cook pasta like a chef"}


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or out.returncode == 0, f"podman {' '.join(args)}: {out.stderr[-2000:]}"
    return out.stdout.strip()


def logs(name: str) -> str:
    """What the service wrote (it logs to stderr), without the engine's own complaints."""
    out = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, name: str, timeout: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{name} not ready after {timeout} s:\n{logs(name)[-3000:]}")


@pytest.fixture
def made():
    """Names of what a test makes (containers, volumes, networks), removed afterwards."""
    things: dict[str, list[str]] = {"container": [], "volume": [], "network": []}
    yield things
    for name in things["container"]:
        podman("rm", "-f", "-v", "-t", "0", name, check=False)
    for kind in ("volume", "network"):
        for name in things[kind]:
            podman(kind, "rm", "-f", name, check=False)


def run(made, name: str, *args: str, image: str = IMAGE) -> str:
    made["container"].append(name)
    return podman("run", "-d", "--name", name, *args, image)


def label(port: int) -> str:
    r = requests.post(f"http://127.0.0.1:{port}/classify", json=TEXT, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["label"]


def bundles(port: int) -> dict[str, str]:
    v = requests.get(f"http://127.0.0.1:{port}/experts", timeout=5).json()
    return {e["class"]: e["bundle"] for e in v["experts"]}


def swap(port: int, token: str, bundle: str) -> requests.Response:
    return requests.put(
        f"http://127.0.0.1:{port}/experts/Travel",
        json={"bundle": bundle},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def token_file(folder: Path, token: str) -> list[str]:
    """The `podman run` arguments that give the service its admin token from a mounted file
    (readable by the image's user), as docs/OPERATIONS.md does."""
    path = folder / "MOE_ADMIN_TOKEN"
    path.write_text(token)
    path.chmod(0o444)
    secret = "/run/secrets/moe/MOE_ADMIN_TOKEN"
    return ["-v", f"{path}:{secret}:ro", "-e", f"MOE_ADMIN_TOKEN_FILE={secret}"]


def test_the_image_serves_as_shipped_and_drains_at_sigterm(made):
    port = free_port()
    name = f"{TAG}-shipped"
    started = time.monotonic()
    run(made, name, "-p", f"127.0.0.1:{port}:8080")
    wait_ready(port, name)
    print(f"ready {time.monotonic() - started:.2f} s after `podman run` was called")
    assert label(port) == "Food and Entertaining"
    # Not root: the image's user, as the process itself reports it.
    assert podman("exec", name, "id", "-u") == "10001"
    uid = podman("exec", name, "sh", "-c", "grep ^Uid: /proc/1/status").split()[1:]
    assert set(uid) == {"10001"}, uid
    assert podman("inspect", "--format", "{{.Config.User}}", name) == "10001:10001"
    # The image's HEALTHCHECK, run as the engine runs it.
    podman("healthcheck", "run", name)
    # A request in flight at SIGTERM: its head and half its body sent, the rest after the signal.
    body = json.dumps({"texts": ["How to train a puppy to sit"] * 8}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    s.sendall(head.encode() + body[:10])
    time.sleep(0.3)
    stop_at = time.monotonic()
    podman("kill", "--signal", "TERM", name)
    time.sleep(1.0)
    s.sendall(body[10:])
    answer = s.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 200"), answer[:500]
    podman("wait", name, timeout=30)
    stopped = time.monotonic() - stop_at
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name) == "0"
    # The drain (MOE_SHUTDOWN_DRAIN_MS, 10 s by default) bounds the exit, not the engine's kill.
    assert stopped < 10, f"exited {stopped:.1f} s after SIGTERM"
    said = logs(name)
    assert "shutting down: finishing in-flight requests" in said, said[-2000:]
    assert "\x1b[" not in said, "colour codes in a container's log"


def test_a_swap_survives_a_restart_with_a_state_volume_and_a_token_file(made, tmp_path):
    port = free_port()
    volume = f"{TAG}-state"
    made["volume"].append(volume)
    args = ["-p", f"127.0.0.1:{port}:8080", "-v", f"{volume}:/var/lib/moe", *token_file(tmp_path, "container-token\n")]
    first = f"{TAG}-state-1"
    run(made, first, *args)
    wait_ready(port, first)
    before = bundles(port)["Travel"]
    assert swap(port, "wrong", "travel--global-ft19-logreg").status_code == 401
    r = swap(port, "container-token", "travel--global-ft19-logreg")
    assert r.status_code == 200, r.text
    podman("restart", "-t", "15", first, timeout=60)
    wait_ready(port, first)
    assert (before, bundles(port)["Travel"]) == ("travel--kd19-logreg", "travel--global-ft19-logreg")
    # The change lives in the volume, not in the container: a new container on it still has it.
    podman("rm", "-f", "-v", "-t", "15", first)
    second = f"{TAG}-state-2"
    run(made, second, *args)
    wait_ready(port, second)
    assert bundles(port)["Travel"] == "travel--global-ft19-logreg"
    assert label(port) == "Food and Entertaining"


class Load:
    """Classify requests to some replicas, in a thread, until stopped; every failure is kept."""

    def __init__(self, ports: list[int]):
        self.ports, self.answered, self.failures = ports, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        with requests.Session() as s:
            i = 0
            while not self.stop.is_set():
                port = self.ports[i % len(self.ports)]
                i += 1
                try:
                    r = s.post(f"http://127.0.0.1:{port}/classify", json=TEXT, timeout=10)
                    if r.status_code == 200:
                        self.answered += 1
                    else:
                        self.failures.append((port, r.status_code, r.text[:200]))
                except requests.RequestException as e:
                    self.failures.append((port, "error", str(e)[:200]))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(timeout=30)


def start_fleet(made, tmp_path) -> list[tuple[str, int]]:
    network, models = f"{TAG}-net", f"{TAG}-models"
    podman("network", "create", network)
    made["network"].append(network)
    made["volume"].append(models)
    token = token_file(tmp_path, "fleet-token")
    etcd = f"{TAG}-etcd"
    run(made, etcd, "--network", network, image=ETCD)
    replicas = []
    for i in (1, 2, 3):
        name, port = f"{TAG}-r{i}", free_port()
        run(
            made,
            name,
            "--network",
            network,
            "--read-only",
            "-p",
            f"127.0.0.1:{port}:8080",
            "-v",
            f"{models}:/app/models",
            *token,
            "-e",
            f"MOE_REGISTRY=etcd://{etcd}:2379/moe",
            "-e",
            f"MOE_REPLICA_ID={name}",
            "-e",
            f"MOE_ADVERTISE_URL=http://{name}:8080",
        )
        # One at a time: the first start copies the image's experts into the empty models volume.
        wait_ready(port, name)
        replicas.append((name, port))
    return replicas


def converged(ports: list[int], bundle: str, timeout: float = 20) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(bundles(p)["Travel"] == bundle for p in ports):
            return True
        time.sleep(0.2)
    return False


def test_a_container_fleet_converges_and_a_killed_replica_rejoins(made, tmp_path):
    replicas = start_fleet(made, tmp_path)
    ports = [p for _, p in replicas]
    fleet = requests.get(f"http://127.0.0.1:{ports[0]}/fleet", timeout=5).json()
    assert len(fleet["replicas"]) == 3, fleet
    r = swap(ports[1], "fleet-token", "travel--global-ft19-logreg")
    assert r.status_code == 200, r.text
    assert converged(ports, "travel--global-ft19-logreg"), [bundles(p)["Travel"] for p in ports]
    victim, victim_port = replicas[2]
    with Load(ports[:2]) as load:
        time.sleep(1)
        podman("kill", victim)
        time.sleep(1)
        # While it is down the fleet still changes; the restarted replica must catch up.
        assert swap(ports[0], "fleet-token", "travel--kd19-logreg").status_code == 200
        podman("start", victim)
        wait_ready(victim_port, victim)
        time.sleep(1)
    assert converged(ports, "travel--kd19-logreg"), [bundles(p)["Travel"] for p in ports]
    assert label(victim_port) == "Food and Entertaining"
    print(f"fleet: {load.answered} requests answered by the two surviving replicas, none failed")
    assert load.failures == [], load.failures[:5]
    assert load.answered > 50, load.answered
