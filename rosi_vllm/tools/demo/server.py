"""The demo's one `vllm serve`: started in its own process group, log to a file, stopped whole.

`vllm serve` forks an engine core and workers. Starting it as a new session
gives them one process group that `stop` signals as a unit, so nothing is left
running after the demo ends, fails or is interrupted (Ctrl-C reaches only the
demo, which then stops the group); with ``--keep-serving`` the group simply
outlives the demo, and ``kill -- -PGID`` ends it. Each way the start can fail
becomes one ``rosi:`` line (`diagnose`), with the log's path for the rest.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import RosiError
from ...testing.serve_process import free_port, vllm_command

MIDDLEWARE = "rosi_vllm.serving.middleware.RosiTenantMiddleware"
#: CPU-sized engine: short prompts and answers; LoRA (the base arm's adapter) forces eager mode on CPU anyway
ENGINE_FLAGS = ("--dtype", "bfloat16", "--max-model-len", "512", "--gpu-memory-utilization", "0.1",
                "--enforce-eager", "--enable-lora", "--max-lora-rank", "1", "--max-loras", "2")

#: log substrings that mean the engine ran out of memory (vLLM's CPU worker, torch, the allocator)
OOM_MARKERS = ("No available memory for the cache blocks", "is less than requested memory for kv",
               "OutOfMemoryError", "out of memory", "Cannot allocate memory", "MemoryError")


def port_problem(host: str, port: int) -> str | None:
    """Why `port` cannot be served on (taken, or not ours to bind), or None."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def pick_port(host: str, port: int | None) -> int:
    if port is None:
        return free_port()
    problem = port_problem(host, port)
    if problem:
        raise RosiError(f"rosi: port {port} on {host} is not free ({problem}); pass another --port, "
                        "or leave --port out for a free one")
    return port


def last_error_line(log: str) -> str:
    """The log's most telling line: the last `rosi:` line, else the last error-looking one."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for wanted in (lambda s: "rosi:" in s and ("ERROR" in s or "Error" in s or "refus" in s),
                   lambda s: "Error" in s or "ERROR" in s or "error:" in s):
        found = [line for line in lines if wanted(line)]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else "(empty log)"


def diagnose(log: str, returncode: int | None, log_path: Path) -> str:
    """One `rosi:` line for an engine that exited (or never became healthy) while starting."""
    if returncode is not None and returncode in (-signal.SIGKILL, 137):
        return (f"rosi: the vLLM server was killed (SIGKILL) while starting, most likely out of memory; "
                f"free some memory and retry (log: {log_path})")
    if any(marker in log for marker in OOM_MARKERS):
        return (f"rosi: the vLLM engine ran out of memory while starting; free some memory (or lower other "
                f"load) and retry (log: {log_path})")
    if "Address already in use" in log:
        return f"rosi: the server's port was taken while it started; retry, or pass a free --port (log: {log_path})"
    code = f" (exit {returncode})" if returncode is not None else ""
    return f"rosi: the vLLM server failed to start{code}: {last_error_line(log)} (log: {log_path})"


@dataclass
class DemoServer:
    proc: subprocess.Popen
    host: str
    port: int
    log_path: Path
    served_name: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pgid(self) -> int:
        return self.proc.pid  # a new session: its leader's pid is the group id

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def healthy(self) -> bool:
        import requests

        try:
            return requests.get(self.url + "/health", timeout=2).status_code == 200
        except requests.RequestException:
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


def start(model_dir: Path, served_name: str, direction: Path, alpha: float, tenant_config: Path, workdir: Path,
          *, host: str, port: int) -> DemoServer:
    """`vllm serve` the model hardened at `alpha` with the tenant middleware on `port` (`pick_port`); returns at once."""
    log_path = workdir / "vllm.log"
    cmd = [*vllm_command(), "serve", str(model_dir), "--served-model-name", served_name,
           "--host", host, "--port", str(port), *ENGINE_FLAGS,
           "--load-format", "rosi",
           "--model-loader-extra-config", json.dumps({"direction": str(direction), "alpha": alpha}),
           "--middleware", MIDDLEWARE]
    env = {**os.environ, "ROSI_TENANT_CONFIG": str(tenant_config), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
           "ROSI_ADAPTER_CACHE": str(workdir / "adapters"),
           # vLLM loads the plugin by module name in every process: keep the demo's own copy first on the path
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[3]),
                                                     os.environ.get("PYTHONPATH", "")) if p)}
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    return DemoServer(proc, host, port, log_path, served_name)


def wait_ready(server: DemoServer, timeout: float = 300.0, progress=None) -> float:
    """Block until /health answers; raise a one-line `RosiError` if the server dies or never comes up.

    `progress(elapsed_seconds)` is called about once a second while waiting.
    """
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if server.healthy():
            return elapsed
        code = server.proc.poll()
        if code is not None:
            raise RosiError(diagnose(server.log(), code, server.log_path))
        if elapsed > timeout:
            raise RosiError(f"rosi: the vLLM server did not become ready in {timeout:.0f} s: "
                            f"{last_error_line(server.log())} (log: {server.log_path})")
        if progress:
            progress(elapsed)
        time.sleep(1.0 if elapsed > 5 else 0.5)


def interrupt_as_keyboard_interrupt() -> None:
    """Ctrl-C and SIGTERM (e.g. from a test harness or `timeout`) unwind as KeyboardInterrupt, so `finally`
    stops the server.

    SIGINT is set explicitly too: a process started from a non-interactive shell's background job inherits
    SIGINT *ignored*, and Python then leaves it ignored, so the demo would run on after an interrupt.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, signal.default_int_handler)
