"""Start `vllm serve` as an operator would, for tests and benchmarks: free port, log file, health polling."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SERVE_FLAGS = ["--dtype", "bfloat16", "--max-model-len", "256", "--gpu-memory-utilization", "0.1", "--enforce-eager"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    exe = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "vllm.entrypoints.cli.main"]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthy(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(model: Path | None, log_path: Path, *, load_format: str | None = "rosi", extra: dict | None = None,
                 args: list[str] | None = None, env: dict | None = None) -> Server:
    """`vllm serve` on a free local port; ``model=None`` when ``args`` name it (``--model=...``)."""
    port = free_port()
    cmd = vllm_command() + ["serve", *([str(model)] if model is not None else []),
                            "--host", "127.0.0.1", "--port", str(port), *SERVE_FLAGS]
    if load_format:
        cmd += ["--load-format", load_format]
    if extra is not None:
        cmd += ["--model-loader-extra-config", json.dumps(extra)]
    cmd += args or []
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return Server(proc, port, log_path)


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
