"""`moe serve` for the measurement scripts: a server on a model root with its own state folder, its
output in a log file, ready once /readyz answers, stopped on leaving the block."""

import contextlib
import os
import subprocess
import time
import urllib.request
from pathlib import Path

MOE = Path(os.environ.get("MOE_BIN", "target/release/moe"))


@contextlib.contextmanager
def serving(models, state, port, log, extra=()):
    """Yields the server's base URL."""
    cmd = [str(MOE), "serve", "--models", str(models), "--state", str(state), "--port", str(port), *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if urllib.request.urlopen(base + "/readyz", timeout=5).status == 200:
                        break
                except OSError:
                    time.sleep(0.5)
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=30)
