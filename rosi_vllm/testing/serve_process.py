"""Start `vllm serve` as an operator would: free port, log file, health polling, and a stop that leaves nothing.

One `Server` for the tests, the benchmarks and `rosi demo`. `vllm serve` forks
an engine core and workers; the server is started in a process group of its
own, so they share one group that `Server.stop` signals as a unit (SIGTERM,
then SIGKILL after a grace period). Stopping only the parent, as before, could
leave an engine core running when the API server died first.

A new process group, not a new session: with the kernel's autogroup scheduling
(on by default on desktop and many server kernels) every session is its own CPU
scheduling group, so a server in a session of its own is given half the CPU
against its load generator instead of competing thread by thread, which moved
the tenant-priority test's latencies by an order of magnitude on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: a tiny test model's server: 64 MiB of KV cache (thousands of tokens at its size) rather than a share of the RAM,
#: whose allocation is most of an engine's start on CPU (`vllm_glue.generation.sized_for`)
SERVE_FLAGS = ("--dtype", "bfloat16", "--max-model-len", "256", "--kv-cache-memory-bytes", str(64 << 20),
               "--enforce-eager")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    exe = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "vllm.entrypoints.cli.main"]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pgid(self) -> int:
        """The server's process group (its leader's pid); ``kill -- -PGID`` stops it all."""
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def healthy(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if not self.group_alive():
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.group_alive():
                if self.proc.poll() is None:
                    try:
                        self.proc.wait(0.2)
                    except subprocess.TimeoutExpired:
                        pass
                else:
                    time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.wait(5)


def start_server(model: Path | str | None, log_path: Path, *, load_format: str | None = "rosi",
                 extra: dict | None = None, args: list[str] | None = None, env: dict | None = None,
                 host: str = "127.0.0.1", port: int | None = None, flags=SERVE_FLAGS) -> Server:
    """`vllm serve` on `port` (a free one if None); returns at once. ``model=None`` when ``args`` name it.

    The log starts with the command line, then everything the server prints.
    """
    port = port or free_port(host)
    cmd = vllm_command() + ["serve", *([str(model)] if model is not None else []),
                            "--host", host, "--port", str(port), *flags]
    if load_format:
        cmd += ["--load-format", load_format]
    if extra is not None:
        cmd += ["--model-loader-extra-config", json.dumps(extra)]
    cmd += args or []
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, process_group=0)
    return Server(proc, port, log_path, host)


def wait_until(server: Server, timeout: float = 300) -> tuple[bool, bool]:
    """Poll until healthy or exited. Returns (came_up, exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.healthy():
            return True, False
        if server.proc.poll() is not None:
            return server.healthy(), True
        time.sleep(0.5)
    return False, False
