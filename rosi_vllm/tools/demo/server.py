"""The demo's one `vllm serve`: the engine flags, the port, and one ``rosi:`` line for each way a start fails.

The process itself is `rosi_vllm.testing.serve_process.Server`, started in its
own process group, so nothing is left running after the demo ends, fails or is
interrupted (Ctrl-C reaches only the demo, which then stops the group); with
``--keep-serving`` the group simply outlives the demo, and ``kill -- -PGID``
ends it. Each way the start can fail becomes one ``rosi:`` line (`diagnose`),
with the log's path for the rest.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from ...core.errors import RosiError
from ...testing.serve_process import Server, free_port, start_server

MIDDLEWARE = "rosi_vllm.serving.middleware.RosiTenantMiddleware"
#: CPU-sized engine: short prompts and answers, KV cache for 64 of them at once (SmolLM2: 23 KiB a token) rather
#: than a share of the RAM, whose allocation is most of a start on CPU; LoRA (the base arm's adapter) forces eager
#: mode on CPU anyway
ENGINE_FLAGS = ("--dtype", "bfloat16", "--max-model-len", "512", "--kv-cache-memory-bytes", str(768 << 20),
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
        return free_port(host)
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


def start(model_dir: Path, served_name: str, direction: Path, alpha: float, tenant_config: Path, workdir: Path,
          *, host: str, port: int) -> Server:
    """`vllm serve` the model hardened at `alpha` with the tenant middleware on `port` (`pick_port`); returns at once."""
    env = {"ROSI_TENANT_CONFIG": str(tenant_config), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
           "ROSI_ADAPTER_CACHE": str(workdir / "adapters"),
           # vLLM loads the plugin by module name in every process: keep the demo's own copy first on the path
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[3]),
                                                     os.environ.get("PYTHONPATH", "")) if p)}
    return start_server(model_dir, workdir / "vllm.log", host=host, port=port, flags=ENGINE_FLAGS,
                        extra={"direction": str(direction), "alpha": alpha},
                        args=["--served-model-name", served_name, "--middleware", MIDDLEWARE], env=env)


def wait_ready(server: Server, timeout: float = 300.0, progress=None) -> float:
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
