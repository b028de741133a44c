"""A ``cosdpo serve`` process started in the background, for tests, benchmarks and notebooks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def background_server(model, *options: str, host: str = "127.0.0.1", timeout: float = 180):
    """Yield ``(url, process)`` once ``GET /healthz`` answers 200; stop the server on exit.

    The server's output goes to a file rather than a pipe: a pipe nobody reads
    fills up, and then the server blocks on its next log line.
    """
    port = free_port(host)
    cmd = [sys.executable, "-m", "cosdpo", "serve", str(model), "--host", host, "--port", str(port), *options]
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}
    )
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"cosdpo serve stopped before it was ready:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cosdpo serve was not ready after {timeout:.0f} s")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
