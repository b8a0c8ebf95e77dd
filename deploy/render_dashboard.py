"""Render the Grafana dashboard to a PNG from real metrics, without Grafana or Prometheus.

    python deploy/render_dashboard.py --out deploy/dashboard.png     # ~2 min on CPU

Starts a real `vllm serve` (tiny random model, rosi loader, tenant middleware,
an A/B experiment and an adapter variant), sends mixed tenant traffic
(streaming and not, some requests rejected) while scraping `/metrics` every
few seconds, then evaluates every panel's PromQL expression from
`compose/grafana/dashboards/rosi.json` over the scrapes and draws the panels.

The evaluator covers exactly the PromQL the dashboard uses: selectors with
label matchers and ranges, `rate`, `sum`/`max` with `by (…)`,
`histogram_quantile`, and `/` between vectors with equal labels. Anything else
is an error, so an expression the renderer cannot read fails loudly.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "compose/grafana/dashboards/rosi.json"

# -- a small PromQL subset -------------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<str>"[^"]*")'
                    r'|(?P<range>\[\d+[smh]\])|(?P<op>[(){},=/]))')


def tokenize(expr: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise ValueError(f"cannot parse {expr[pos:]!r}")
        tokens.append(m.group().strip())
        pos = m.end()
    return tokens


class Parser:
    """expr := term ('/' term)?; term := number | func '(' args ')' | agg [by (...)] '(' expr ')' | selector."""

    def __init__(self, expr: str):
        self.tokens, self.i = tokenize(expr), 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected=None):
        token = self.peek()
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, got {token!r}")
        self.i += 1
        return token

    def parse(self):
        node = self.expr()
        if self.peek() is not None:
            raise ValueError(f"trailing {self.tokens[self.i:]}")
        return node

    def expr(self):
        left = self.term()
        if self.peek() == "/":
            self.take("/")
            return ("div", left, self.term())
        return left

    def term(self):
        token = self.take()
        if re.fullmatch(r"\d+(\.\d+)?", token):
            return ("num", float(token))
        if token in ("sum", "max"):
            by = []
            if self.peek() == "by":
                self.take("by")
                by = self.labels()
            self.take("(")
            inner = self.expr()
            self.take(")")
            return ("agg", token, tuple(by), inner)
        if token == "rate":
            self.take("(")
            inner = self.term()
            self.take(")")
            return ("rate", inner)
        if token == "histogram_quantile":
            self.take("(")
            q = self.term()
            self.take(",")
            inner = self.expr()
            self.take(")")
            return ("hq", q[1], inner)
        matchers, window = {}, None
        if self.peek() == "{":
            self.take("{")
            while self.peek() != "}":
                key = self.take()
                self.take("=")
                matchers[key] = self.take().strip('"')
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
        if self.peek() and self.peek().startswith("["):
            window = self.take()
        return ("sel", token, matchers, window)

    def labels(self):
        self.take("(")
        names = []
        while self.peek() != ")":
            names.append(self.take())
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        return names


def _seconds(window: str) -> float:
    return float(window[1:-2]) * {"s": 1, "m": 60, "h": 3600}[window[-2]]


def evaluate(node, scrapes, at: int) -> dict[frozenset, float]:
    """Instant vector at scrape index `at`: {labels: value}."""
    kind = node[0]
    if kind == "num":
        return {frozenset(): node[1]}
    if kind == "sel":
        _, name, matchers, _ = node
        t, samples = scrapes[at]
        return {labels: v for (n, labels), v in samples.items()
                if n == name and all(dict(labels).get(k) == val for k, val in matchers.items())}
    if kind == "rate":
        _, name, matchers, window = node[1]
        t_now, now = scrapes[at]
        start = at
        while start > 0 and t_now - scrapes[start - 1][0] <= _seconds(window):
            start -= 1
        t_then, then = scrapes[start]
        if t_now == t_then:
            return {}
        out = {}
        for (n, labels), v in now.items():
            if n == name and all(dict(labels).get(k) == val for k, val in matchers.items()):
                out[labels] = (v - then.get((n, labels), 0.0)) / (t_now - t_then)
        return out
    if kind == "agg":
        _, op, by, inner = node
        groups: dict[frozenset, list[float]] = {}
        for labels, v in evaluate(inner, scrapes, at).items():
            key = frozenset((k, val) for k, val in labels if k in by)
            groups.setdefault(key, []).append(v)
        return {k: (sum(vs) if op == "sum" else max(vs)) for k, vs in groups.items()}
    if kind == "div":
        left, right = evaluate(node[1], scrapes, at), evaluate(node[2], scrapes, at)
        return {k: v / right[k] for k, v in left.items() if right.get(k)}
    if kind == "hq":
        _, q, inner = node
        by_series: dict[frozenset, list[tuple[float, float]]] = {}
        for labels, v in evaluate(inner, scrapes, at).items():
            d = dict(labels)
            le = float(d.pop("le"))
            by_series.setdefault(frozenset(d.items()), []).append((le, v))
        out = {}
        for key, buckets in by_series.items():
            buckets.sort()
            total = buckets[-1][1]
            if total <= 0:
                continue
            rank, prev_le, prev_count = q * total, 0.0, 0.0
            for le, count in buckets:
                if count >= rank:
                    out[key] = prev_le if math.isinf(le) else prev_le + (le - prev_le) * (
                        (rank - prev_count) / (count - prev_count) if count > prev_count else 0.0)
                    break
                prev_le, prev_count = le, count
        return out
    raise ValueError(kind)


def series(expr: str, scrapes) -> dict[frozenset, list[tuple[float, float]]]:
    node = Parser(expr).parse()
    out: dict[frozenset, list[tuple[float, float]]] = {}
    t0 = scrapes[0][0]
    for i in range(len(scrapes)):
        for labels, v in evaluate(node, scrapes, i).items():
            out.setdefault(labels, []).append((scrapes[i][0] - t0, v))
    return out


# -- a real run --------------------------------------------------------------------------------------
def scrape(url: str) -> tuple[float, dict]:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return time.time(), samples


def run_and_scrape(seconds: float, work: Path) -> list:
    import requests
    import torch
    import yaml

    sys.path.insert(0, str(HERE.parent))
    from rosi_vllm.checkpoint import model_shape
    from rosi_vllm.direction_file import DirectionFile, save_direction
    from rosi_vllm.fingerprint import fingerprint_checkpoint
    from rosi_vllm.serving.tenant_config import key_digest
    from rosi_vllm.testing.serve_process import start_server, wait_until
    from rosi_vllm.testing.tiny_models import build_tiny_model

    model = build_tiny_model("llama", work / "tiny")
    shape = model_shape(model)
    vector = torch.randn(shape.hidden_size, generator=torch.Generator().manual_seed(1))
    direction = save_direction(work / "d.safetensors", DirectionFile(
        vector, shape.architecture, shape.hidden_size, shape.num_layers, 1, 8.0, fingerprint_checkpoint(model),
        {"method": "dashboard render: random vector"}))
    keys = {"acme": "sk-render-acme", "kids": "sk-render-kids"}
    config = work / "tenants.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1, "variants": {"base": 0, "standard": "baked", "strict": 32},
        "tenants": {
            "acme": {"api_key_sha256": [key_digest(keys["acme"])], "default_variant": "standard",
                     "experiment": {"name": "acme-ab", "arms": {"base": 50, "standard": 50}}},
            "kids": {"api_key_sha256": [key_digest(keys["kids"])], "default_variant": "strict"}}}))
    server = start_server(model, work / "serve.log", extra={"direction": str(direction)},
                          env={"ROSI_TENANT_CONFIG": str(config), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
                               "ROSI_ADAPTER_CACHE": str(work / "adapters")},
                          args=["--enable-lora", "--max-lora-rank", "1", "--max-loras", "4",
                                "--middleware", "rosi_vllm.serving.middleware.RosiTenantMiddleware"])
    try:
        assert wait_until(server, timeout=600)[0], server.log()[-2000:]
        stop, scrapes = False, []

        def traffic(worker: int):
            i = 0
            while not stop:
                tenant = "acme" if i % 3 else "kids"
                body = {"model": str(model), "prompt": f"request {worker}-{i}", "max_tokens": 8 + i % 8,
                        "ignore_eos": True, "stream": bool(i % 2), "user": f"user-{worker}-{i % 40}"}
                key = keys[tenant] if i % 17 else "sk-wrong"
                requests.post(server.url + "/v1/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {key}"}).content
                i += 1

        threads = [threading.Thread(target=traffic, args=(w,), daemon=True) for w in range(4)]
        for t in threads:
            t.start()
        deadline = time.time() + seconds
        while time.time() < deadline:
            scrapes.append(scrape(server.url))
            time.sleep(3)
        stop = True
        for t in threads:
            t.join(timeout=60)
        return scrapes
    finally:
        server.stop()


def render(scrapes, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.2 * rows))
    for ax, panel in zip(axes.flat, panels):
        ax.set_title(panel["title"], fontsize=9)
        if panel["type"] == "table":
            lines = []
            for target in panel["targets"]:
                for labels, points in series(target["expr"], scrapes).items():
                    lines.append(", ".join(f"{k}={v}" for k, v in sorted(labels)) + f"  →  {points[-1][1]:g}")
            ax.axis("off")
            ax.text(0.01, 0.9, "\n".join(lines) or "(no data)", va="top", family="monospace", fontsize=8)
            continue
        for target in panel["targets"]:
            for labels, points in sorted(series(target["expr"], scrapes).items(), key=lambda kv: sorted(kv[0])):
                legend = target.get("legendFormat") or ""
                for k, v in labels:
                    legend = legend.replace("{{" + k + "}}", v)
                ax.plot([p[0] for p in points], [p[1] for p in points], label=legend or "value")
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{dashboard['title']} — rendered from {len(scrapes)} real scrapes of a local vllm serve", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--out", default=str(HERE / "dashboard.png"))
    args = parser.parse_args(argv)
    scrapes = run_and_scrape(args.seconds, Path(tempfile.mkdtemp(prefix="rosi-dash-")))
    render(scrapes, Path(args.out))
    print(f"wrote {args.out} from {len(scrapes)} scrapes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
