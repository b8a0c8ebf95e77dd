"""`Server.stop`: the server's whole process group goes, as `vllm serve`'s engine core and workers must."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from rosi_vllm.testing.serve_process import Server, start_server


def test_stop_ends_the_whole_process_group(tmp_path):
    """A server's children (vLLM's engine core, workers) go with it: here a shell and its two sleeps."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
    srv = Server(proc, 1, tmp_path / "log")
    time.sleep(0.3)
    assert srv.group_alive()
    srv.stop(grace=5)
    assert not srv.group_alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_a_started_server_leads_its_own_group_in_our_session_and_logs_its_command(tmp_path, monkeypatch):
    import rosi_vllm.testing.serve_process as serve_process

    # a stand-in for the vllm executable (named so): a shell that forks a child and waits
    monkeypatch.setattr(serve_process, "vllm_command", lambda: ["sh", "-c", "sleep 300 & wait", "vllm"])
    srv = start_server("model", tmp_path / "log", port=12345)
    try:
        assert os.getpgid(srv.proc.pid) == srv.pgid == srv.proc.pid != os.getpgid(0)
        assert os.getsid(srv.proc.pid) == os.getsid(0)  # same session: same autogroup for CPU scheduling
        assert srv.log().startswith("$ sh -c") and "--port 12345" in srv.log()
    finally:
        srv.stop(grace=5)
    assert not srv.group_alive()
