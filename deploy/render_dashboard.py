"""Render the Grafana dashboard to a PNG from a real Prometheus scraping a real `vllm serve`, without Grafana.

    python deploy/render_dashboard.py --out deploy/dashboard.png     # ~3.5 min on a busy 2-core CPU

Starts a real `vllm serve` (tiny random model, rosi loader, tenant middleware,
an A/B experiment and an adapter variant) and a real `prometheus` (Debian's
package, `scripts/setup.sh` installs it) scraping that server's `/metrics`
every second, with `deploy/prometheus/alerts.yml` loaded. It sends mixed
tenant traffic (streaming and not, some requests with a wrong key) and, a third
of the way in, a broken tenant config edit (rejected) followed by a good one
(applied). Then it asks Prometheus' HTTP API (`/api/v1/query_range`) for every
panel's PromQL from `compose/grafana/dashboards/rosi.json` and draws the
answers: the numbers on the PNG are what Grafana would show for this traffic,
computed by Prometheus itself (rates with counter resets, `histogram_quantile`).

Everything listens on 127.0.0.1 only, and both processes are stopped on the
way out, whatever happens. The pieces (`running_prometheus`, `query`,
`query_range`, `serve_with_tenants`, `send_traffic`, `panel_results`,
`render`) are importable: tests/engine/test_dashboard_prometheus.py runs the
same pipeline at a smaller size.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "compose/grafana/dashboards/rosi.json"
ALERTS = HERE / "prometheus/alerts.yml"
JOB = "rosi-vllm"  # the compose recipe's job name, so label sets match what an operator sees

sys.path.insert(0, str(HERE.parent))  # run as a script from a checkout


# -- Prometheus ------------------------------------------------------------------------------------
def prometheus_binary() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        raise RuntimeError("no `prometheus` binary on PATH: run scripts/setup.sh (installs Debian's prometheus)")
    return exe


def _get_json(url: str, params: dict | None = None, timeout: float = 30) -> dict:
    import requests

    response = requests.get(url, params=params, timeout=timeout)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        raise RuntimeError(f"prometheus: {url} {params}: {response.status_code} {body.get('error', body)}")
    return body["data"]


@contextmanager
def running_prometheus(scrape_url: str, work: Path, *, scrape_interval: float = 1.0,
                       rule_files: list[Path] = (ALERTS,), ready_timeout: float = 60):
    """A real Prometheus on a free 127.0.0.1 port scraping ``scrape_url``/metrics; yields its base URL.

    Its config, TSDB and log live under ``work``. Rules are evaluated as often as
    targets are scraped, so alerts without a ``for`` fire within seconds. The
    process is terminated (then killed) on exit, whatever happened inside.
    """
    import yaml

    from rosi_vllm.testing.serve_process import free_port

    work.mkdir(parents=True, exist_ok=True)
    target = urlsplit(scrape_url)
    interval = f"{max(1, round(scrape_interval))}s"
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target.netloc]}]}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "prometheus.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
                                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, proc, log_path, ready_timeout)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        try:
            if requests.get(url + "/-/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"prometheus not ready after {timeout:.0f} s: {log_path.read_text()[-2000:]}")


def query(prom_url: str, expr: str) -> list[dict]:
    """Instant query now: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
    data = _get_json(prom_url + "/api/v1/query", {"query": expr})
    if data["resultType"] != "vector":
        raise RuntimeError(f"{expr!r}: expected a vector, got {data['resultType']}")
    return data["result"]


def query_range(prom_url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """``/api/v1/query_range``: ``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]`` (a matrix)."""
    data = _get_json(prom_url + "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
    if data["resultType"] != "matrix":
        raise RuntimeError(f"{expr!r}: expected a matrix, got {data['resultType']}")
    return data["result"]


def wait_for_scrape(prom_url: str, timeout: float = 30) -> None:
    """Until Prometheus has scraped the target successfully once (``up == 1``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["value"][1] == "1" for r in query(prom_url, f'up{{job="{JOB}"}}')):
            return
        time.sleep(0.5)
    raise RuntimeError(f"prometheus did not scrape the server within {timeout:.0f} s (up != 1)")


# -- the dashboard -----------------------------------------------------------------------------------
def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panel_results(prom_url: str, dashboard: dict, start: float, end: float, step: float) -> dict:
    """Every target of every panel through query_range: ``{(panel id, refId): matrix}``."""
    return {(panel["id"], target["refId"]): query_range(prom_url, target["expr"], start, end, step)
            for panel in dashboard["panels"] for target in panel["targets"]}


def legend(fmt: str, metric: dict) -> str:
    """Grafana's ``legendFormat``: ``{{label}}`` replaced by the series' label value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) if fmt else (
        ", ".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value")


def render(dashboard: dict, results: dict, out: Path, start: float, subtitle: str = "") -> None:
    """Draw each panel from its query_range answers, two panels a row, x in seconds since ``start``."""
    from matplotlib.ticker import PercentFormatter

    from rosi_vllm.reports.plots import figure

    panels = dashboard["panels"]
    rows = math.ceil(len(panels) / 2)
    with figure(out, size=(14, 3.2 * rows), ncols=2, nrows=rows, dpi=90) as (fig, axes):
        for ax, panel in zip(axes.flat, panels):
            ax.set_title(panel["title"], fontsize=9)
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            if panel["type"] == "table":  # Grafana's table shows the last value of each series
                lines = [f"{legend(t.get('legendFormat', ''), s['metric'])}  "
                         + ", ".join(f"{k}={v}" for k, v in sorted(s["metric"].items()))
                         + f"  →  {float(s['values'][-1][1]):g}"
                         for t in panel["targets"] for s in results[(panel["id"], t["refId"])]]
                ax.axis("off")
                ax.text(0.01, 0.9, "\n".join(lines) or "(no data)", va="top", family="monospace", fontsize=7,
                        wrap=True)
                continue
            for target in panel["targets"]:
                matrix = sorted(results[(panel["id"], target["refId"])], key=lambda s: sorted(s["metric"].items()))
                for s in matrix:
                    points = [(float(t) - start, float(v)) for t, v in s["values"] if not math.isnan(float(v))]
                    ax.plot([p[0] for p in points], [p[1] for p in points],
                            label=legend(target.get("legendFormat", ""), s["metric"]))
            if unit == "percentunit":
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            elif unit in ("s", "reqps"):
                ax.set_ylabel(unit, fontsize=8)
            ax.set_xlabel("seconds", fontsize=8)
            ax.tick_params(labelsize=7)
            if ax.lines:
                ax.legend(fontsize=6, loc="best")
            else:
                ax.text(0.5, 0.5, "(no data)", ha="center", transform=ax.transAxes)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(f"{dashboard['title']} — {subtitle}", fontsize=11)


# -- a real server and its traffic -------------------------------------------------------------------
KEYS = {"acme": "sk-render-acme", "kids": "sk-render-kids"}


def tenant_section(*, broken: bool = False, kids_variant: str = "strict") -> dict:
    """The render's variants and tenants: acme in an A/B experiment, kids on an adapter variant.

    ``broken`` names a default variant that does not exist, which the server
    must reject on reload while it keeps serving the previous generation.
    """
    from rosi_vllm.serving.tenant_config import key_digest

    return {
        "policies": {"raw_completions": "allow"},  # its traffic is raw prompts
        "variants": {"base": 0, "standard": "baked", "strict": 64},
        "tenants": {
            "acme": {"api_key_sha256": [key_digest(KEYS["acme"])], "default_variant": "standard",
                     "experiment": {"name": "acme-ab", "arms": {"base": 50, "standard": 50}}},
            "kids": {"api_key_sha256": [key_digest(KEYS["kids"])],
                     "default_variant": "no-such-variant" if broken else kids_variant}}}


def tenants_config(path: Path, **section) -> None:
    """Write the tenant config of `tenant_section` atomically (a new inode, as a ConfigMap update does)."""
    import yaml

    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"version": 1, **tenant_section(**section)}))
    tmp.replace(path)


def serve_with_tenants(work: Path):
    """Start `vllm serve` on a tiny random Llama with a direction and the tenant middleware.

    Returns (server, model path, tenant config path); the caller waits for
    health and must ``server.stop()``.
    """
    import torch

    from rosi_vllm.core.checkpoint import model_shape
    from rosi_vllm.core.direction_file import DirectionFile, save_direction
    from rosi_vllm.core.fingerprint import fingerprint_checkpoint
    from rosi_vllm.testing.serve_process import start_server
    from rosi_vllm.testing.tiny_models import build_tiny_model

    model = build_tiny_model("llama", work / "tiny")
    shape = model_shape(model)
    vector = torch.randn(shape.hidden_size, generator=torch.Generator().manual_seed(1))
    direction = save_direction(work / "d.safetensors", DirectionFile(
        vector, shape.architecture, shape.hidden_size, shape.num_layers, 1, 8.0, fingerprint_checkpoint(model),
        {"method": "dashboard render: random vector"}))
    config = work / "tenants.yaml"
    tenants_config(config)
    server = start_server(model, work / "serve.log", extra={"direction": str(direction)},
                          env={"ROSI_TENANT_CONFIG": str(config), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
                               "ROSI_ADAPTER_CACHE": str(work / "adapters")},
                          args=["--enable-lora", "--max-lora-rank", "1", "--max-loras", "4",
                                "--middleware", "rosi_vllm.serving.middleware.RosiTenantMiddleware"])
    return server, model, config


def send_traffic(server_url: str, model: Path, edit_config, seconds: float, workers: int = 4) -> int:
    """Mixed tenant traffic for ``seconds``; returns the number of requests sent.

    Two tenants (acme in an A/B experiment, kids on an adapter variant),
    streamed and not, every 17th request with a wrong key (401), every 11th an
    assistant prefill the tenant policy refuses (400). A third of the
    way in the tenant config is broken (a rejected reload), two thirds in it is
    replaced by a valid edit (generation 2), so the config panel has something
    to show. ``edit_config(**tenant_section options)`` writes the server's tenant file.
    """
    import requests

    stop = threading.Event()
    sent = [0] * workers

    def worker(w: int):
        i = 0
        while not stop.is_set():
            tenant = "acme" if i % 3 else "kids"
            body = {"model": str(model), "prompt": f"request {w}-{i}", "max_tokens": 8 + i % 8,
                    "ignore_eos": True, "stream": bool(i % 2), "user": f"user-{w}-{i % 40}"}
            key = KEYS[tenant] if i % 17 else "sk-wrong"
            path = "/v1/completions"
            if i % 11 == 5:  # an assistant prefill, which the tenant policy refuses (400, counted by reason)
                path, body = "/v1/chat/completions", {"model": str(model), "max_tokens": 4, "messages": [
                    {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure, here is"}]}
            try:
                requests.post(server_url + path, json=body, timeout=60,
                              headers={"Authorization": f"Bearer {key}"}).content
            except requests.RequestException:
                pass  # a failed request shows on the dashboard; the run goes on
            i += 1
            sent[w] = i

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    try:
        time.sleep(seconds / 3)
        edit_config(broken=True)
        time.sleep(seconds / 3)
        edit_config(kids_variant="standard")
        time.sleep(seconds / 3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    return sum(sent)


def run(work: Path, out: Path, *, seconds: float = 90, workers: int = 4, step: float = 2.0,
        startup_timeout: float = 600, served=None) -> dict:
    """The whole pipeline; returns what a test wants to check (results, ``up``, alerts, sizes).

    ``served``: (server, model, edit_config) of a running server whose tenant file holds `tenant_section`
    (the tests' shared server); by default a server is started here and stopped afterwards.
    """
    from rosi_vllm.testing.serve_process import wait_until

    dashboard = load_dashboard()
    if served is None:
        server, model, config = serve_with_tenants(work)
        served = (server, model, lambda **section: tenants_config(config, **section))
        owned = server
    else:
        owned = None
    server, model, edit_config = served
    try:
        came_up, _ = wait_until(server, timeout=startup_timeout)
        if not came_up:
            raise RuntimeError(f"vllm serve did not come up: {server.log()[-3000:]}")
        with running_prometheus(server.url, work / "prometheus") as prom:
            wait_for_scrape(prom)
            start = time.time()
            sent = send_traffic(server.url, model, edit_config, seconds, workers)
            time.sleep(3)  # the last requests' metrics are scraped and rules evaluated
            end = time.time()
            results = panel_results(prom, dashboard, start, end, step)
            up = query(prom, f'up{{job="{JOB}"}}')
            alerts = query(prom, "ALERTS")
            render(dashboard, results, out, start,
                   f"Prometheus {step:g} s steps over {end - start:.0f} s of {sent} requests to a local vllm serve")
    finally:
        if owned is not None:
            owned.stop()
    return {"results": results, "up": up, "alerts": alerts, "sent": sent, "start": start, "end": end}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90, help="traffic duration")
    parser.add_argument("--out", default=str(HERE / "dashboard.png"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rosi-dash-") as work:
        outcome = run(Path(work), Path(args.out), seconds=args.seconds)
    empty = [key for key, matrix in outcome["results"].items() if not matrix]
    firing = sorted({a["metric"]["alertname"] for a in outcome["alerts"] if a["metric"]["alertstate"] == "firing"})
    print(f"wrote {args.out}: {outcome['sent']} requests, {len(outcome['results'])} queries "
          f"({len(empty)} without data: {empty}), alerts firing: {firing or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
