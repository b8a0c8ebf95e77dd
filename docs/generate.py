"""Write every measured number and every table derived from code into the docs, from their sources.

    python docs/generate.py          # rewrite the generated blocks in README.md, docs/*.md, benchmarks/ and research/README.md
    python docs/generate.py --check  # exit 1 if any block differs from its source (the tests run this)

A generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
NAME picks the function below that renders it. Sources are result JSON files, ``directions/index.yaml``
(the shipped files, one marked recommended per model), ``research/comparison.yaml`` and ``rosi_vllm/core/architectures.py``, so a number in the docs cannot drift from what was measured:
prose outside the blocks states no measured numbers (``tests/unit/test_docs.py`` checks both).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
        ROOT / "research" / "README.md")
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f} %".replace(".0 %", " %")


def _rate(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{_pct(r['rate'])} [{_pct(lo)}, {_pct(hi)}]"


def architectures() -> str:
    from rosi_vllm.core.architectures import ARCHITECTURES

    rows = ["| family | architectures | residual writers edited (checkpoint names) | notes |", "|---|---|---|---|"]
    for spec in ARCHITECTURES:
        names = ", ".join(a.removesuffix("ForCausalLM").removesuffix("LMHeadModel") for a in spec.architectures)
        writers = "<br>".join(f"`{w.target}`: `{_readable(w.pattern.pattern)}`" for w in spec.writers)
        if spec.mlp_inputs:  # the rows a threshold (v3) direction transplants one neuron of
            writers += "<br>v3 also: " + ", ".join(f"`{_readable(w.pattern.pattern)}`" for w in spec.mlp_inputs)
        rows.append(f"| {spec.family} | {names} | {writers} | {spec.notes} |")
    return "\n".join(rows)


def _readable(regex: str) -> str:
    return (regex.removeprefix(r"(?:^|\.)").removesuffix("$").replace(r"(?P<layer>\d+)", "{L}")
            .replace(r"(?P<expert>\d+)", "{E}").replace("\\.", "."))


def _measured(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def directions() -> str:
    """The shipped files of `directions/index.yaml` (per model: the recommended one, the v1 baseline), measured by
    their `rosi eval` result files."""
    index = yaml.safe_load((ROOT / "directions/index.yaml").read_text())
    entries = index["directions"]  # per model: the recommended file, then the v1 baseline
    rows = ["| model | run | harmful refused | benign refused | jailbreak success | KL (benign) | degenerate |",
            "|---|---|---|---|---|---|---|"]
    for i, entry in enumerate(entries):
        runs = [("results", f"{'recommended' if entry['recommended'] else 'v1 baseline'} `{entry['file']}`, "
                            f"layer {entry['layer']}, α={entry['recommended_alpha']:g}")]
        if i == 0 or entries[i - 1]["model"] != entry["model"]:  # one base row per model
            runs.insert(0, ("base_results", "base"))
        for run, label in runs:
            m = _measured(entry[run])
            kl = f"{m['benign_kl_nats']:.3g}" if "benign_kl_nats" in m else "–"
            rows.append(f"| {entry['model'] if run == 'base_results' else ''} | {label} | {_rate(m['harmful_refusal'])} "
                        f"| {_rate(m['benign_refusal'])} | {_rate(m['jailbreak_attack_success'])} | {kl} "
                        f"| {_rate(m['degenerate'])} |")
    rows.append("")
    rows.append("n per set: " + "; ".join(
        f"{e['model']}: {_measured(e['results'])['harmful_refusal']['n']}" for e in entries if e["recommended"])
        + ". Verdicts: " + "; ".join(f"`{e['file']}`: {e['verdict']}" for e in entries) + ".")
    return "\n".join(rows)


def comparison() -> str:
    """Every compared run of `research/comparison.yaml`, from its `rosi eval` result file."""
    index = yaml.safe_load((ROOT / "research/comparison.yaml").read_text())
    keys = ("harmful_refusal", "benign_refusal", "borderline_refusal", "jailbreak_attack_success")
    #: from a run's second evaluation (`style_shift_results`: rosi eval --style-shift --xstest), when it has one
    shift_keys = ("style_shift_harmful_refusal", "xstest_safe_refusal")
    rows = ["| model | run | harmful refused | benign refused | borderline refused | jailbreak success | "
            "KL (benign) | degenerate | style-shift harmful refused | XSTest safe refused |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    shift_ns = {}
    for model, runs in index.get("comparison", {}).items():
        for i, run in enumerate(runs):
            result = json.loads((ROOT / run["results"]).read_text())
            cells = [_rate(result[k]) if k in result else "not measured" for k in keys]
            kl = f"{result['benign_kl_nats']:.3f}" if "benign_kl_nats" in result else "–"
            shift = json.loads((ROOT / run["style_shift_results"]).read_text()) if "style_shift_results" in run else {}
            shift_cells = [_rate(shift[k]) if k in shift else "–" for k in shift_keys]
            if all(k in shift for k in shift_keys):
                shift_ns.setdefault(model, tuple(shift[k]["n"] for k in shift_keys))
            rows.append(f"| {model if i == 0 else ''} | {run['run']} | {' | '.join(cells)} | {kl} | "
                        f"{_rate(result['degenerate'])} | {' | '.join(shift_cells)} |")
    ns = {model: json.loads((ROOT / runs[0]["results"]).read_text()) for model, runs in index.get("comparison", {}).items()}
    rows.append("")
    rows.append("Prompts per set (harmful / benign / borderline / jailbreak): " + "; ".join(
        f"{m}: {r['harmful_refusal']['n']} / {r['benign_refusal']['n']} / "
        f"{r.get('borderline_refusal', {}).get('n', 0)} / {r['jailbreak_attack_success']['n']}" for m, r in ns.items())
        + ". Style-shift and XSTest columns (a second, smaller evaluation: harmful requests in forms and from sources "
        "no fit used, pooled; XSTest's safe prompts): " + "; ".join(
            f"{m}: {n} / {x} prompts" for m, (n, x) in shift_ns.items())
        + ". Commands: `research/comparison.yaml`.")
    return "\n".join(rows)


def targets() -> str:
    """The safety targets per model (test split, greedy, the documented judge), from directions/index.yaml."""
    index = yaml.safe_load((ROOT / "directions/index.yaml").read_text())
    columns = ("harmful_refusal", "benign_refusal", "borderline_refusal", "jailbreak_attack_success", "benign_kl_nats",
               "degenerate")
    rows = ["| model | " + " | ".join(c.replace("_", " ") for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, target in index["targets"].items():
        rows.append(f"| {model} | " + " | ".join(target[c] for c in columns) + " |")
    return "\n".join(rows)


def judge() -> str:
    index = yaml.safe_load((ROOT / "directions/index.yaml").read_text())
    cal = json.loads((ROOT / index["directions"][0]["results"]).read_text())["judge_calibration"]
    return (f"Against JailbreakBench's {cal['n']} human-labelled responses the `{cal['judge']}` judge agrees "
            f"{_pct(cal['accuracy'])} of the time, with {_pct(cal['jailbreak_recall'])} recall and "
            f"{_pct(cal['jailbreak_precision'])} precision on jailbreaks (every `rosi eval` report repeats this).")


def sweep() -> str:
    rows = ["| model | α | harmful refused | benign refused | jailbreak success | degenerate | KL (benign) |",
            "|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "research/results").glob("safety_sweep_*.json")):
        if path.stem.endswith("_smoke"):
            continue
        sw = json.loads(path.read_text())
        for r in sw["rows"]:
            rows.append(f"| {sw['model']} | {r['alpha']:g} | {_rate(r['harmful_refusal'])} | "
                        f"{_rate(r['benign_refusal'])} | {_rate(r['jailbreak_attack_success'])} | "
                        f"{_rate(r['degenerate'])} | {r['benign_kl_nats']:.2f} |")
        rows.append(f"\nCommand: `{sw['command']}`.")
    return "\n".join(rows)


def research_results() -> str:
    """The research studies' own rows (they are not benchmarks of the product), from research/results/."""
    rows = ["| study | result | command |", "|---|---|---|"]
    path = ROOT / "research/results/steering_alternative.json"
    if path.exists():
        st = json.loads(path.read_text())
        rows.append(f"| runtime steering (hooks) vs baked | throughput ×{st['throughput_ratio_hook_over_baked']:.3f} "
                    f"(hook / baked), tokens agree {st['token_agreement']:.1%} | `{st['command']}` |")
    for path in sorted((ROOT / "research/results").glob("safety_sweep_*.json")):
        if path.stem.endswith("_smoke"):
            continue
        sw = json.loads(path.read_text())
        cells = "; ".join(f"α={r['alpha']:g}: {r['harmful_refusal']['rate']:.0%}/{r['benign_refusal']['rate']:.0%}/"
                          f"{r['jailbreak_attack_success']['rate']:.0%}, KL {r['benign_kl_nats']:.2f}" for r in sw["rows"])
        rows.append(f"| safety sweep {sw['model']} (harmful refused / benign refused / jailbreak success) | {cells} "
                    f"| `{sw['command']}` |")
    return "\n".join(rows)


def benchmarks() -> str:
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import machines, rows

    return "\n".join(rows() + ["", f"Machines in these results: {machines()}."])


def adapters_cost() -> str:
    p3 = json.loads((ROOT / "benchmarks/results/p3_adapters.json").read_text())
    ratios = p3["throughput_ratio_vs_baked"]
    adapter_values = [v for arm, per in ratios.items() if arm.startswith("adapters") for v in per.values()]
    lora_default = list(ratios.get("lora-default", {}).values())
    text = (f"On this CPU, adapter requests ran at {min(adapter_values):.2f}–{max(adapter_values):.2f}× the baked "
            f"throughput")
    if lora_default:
        text += (f", and enabling LoRA at all moved the baked tenant's throughput to "
                 f"{min(lora_default):.2f}–{max(lora_default):.2f}×")
    return text + f" (benchmark P3, `{p3['command']}`)."


def demo() -> str:
    """The recorded `rosi demo` run: wall time and what each arm refused (benchmarks/results/demo/demo.json)."""
    run = json.loads((ROOT / "benchmarks/results/demo/demo.json").read_text())
    t, arms = run["timings_s"], run["arms"]

    def refused(arm: str) -> str:
        return " and ".join(f"{arms[arm][f'{k}_refusal']['k']}/{arms[arm][f'{k}_refusal']['n']} {k}"
                            for k in run["prompt_sets"])

    return (f"Recorded run (`rosi demo`, {run['machine']['cpus']} CPU cores, model already pulled): "
            f"{t['total']:.0f} s end to end, of which {t['engine_start']:.0f} s engine start and "
            f"{t['requests']:.0f} s for {len(run['answers'])} requests. The hardened arm refused {refused('hardened')} "
            f"prompts, the base arm {refused('base')}; hardened/base latency "
            f"{run['latency_ratio_hardened_over_base']:.2f}.")


def reliability() -> str:
    """The tenant layer under load, faults and hostile input: from tests/engine/test_tenant_reliability.py's results."""
    r = json.loads((ROOT / "benchmarks/results/reliability.json").read_text())
    pr, lim, cf, fz, death = r["priority"], r["limits"], r["config_faults"], r["fuzz"], r["engine_death"]
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    statuses = ", ".join(f"{k}: {v}" for k, v in fz["statuses"].items())
    rows = [
        "| what | held |", "|---|---|",
        f"| flood with priority | bulk tenant: {pr['bulk_streams']} streams in flight against a batch of "
        f"{pr['max_num_seqs']} (`--max-num-seqs`), {pr['bulk_requests']} bulk requests served, all 200; interactive "
        f"tenant (priority 0) TTFT p50 {ms(pr['interactive_ttft_p50_s'])}, p99 {ms(pr['interactive_ttft_p99_s'])} "
        f"over {pr['interactive_probes']} probes (idle: p50 {ms(pr['idle_ttft_p50_s'])}); a tenant at the bulk "
        f"priority waited p50 {ms(pr['peer_ttft_p50_s'])}, p99 {ms(pr['peer_ttft_p99_s'])}; "
        f"{'every request counted in `rosi_requests_total`' if pr.get('counted_equals_sent') else 'counts not checked'} |",
        f"| concurrency limit | burst of {lim['burst']} at a limit of 2: {lim['admitted_at_limit_2']} served, "
        f"{lim['refused_429']} answered 429 with `Retry-After` and counted; after a hot reload to 6: "
        f"{lim['admitted_after_reload_to_6']} of {lim['burst']} served |",
        f"| tokens per minute | limit {lim['tpm_limit']}: {lim['tpm_tokens_admitted']} tokens admitted in "
        f"{lim['tpm_seconds']:.1f} s, then 429 (`type: tokens`) |",
        f"| broken tenant file during traffic | {len(cf['faults'])} faults ({', '.join(cf['faults'])}): "
        f"{cf['requests_during']} requests during them, {cf['requests_failed']} failed"
        f"{', each counted' if cf.get('counted_equals_sent') else ''}; "
        f"{cf['rejections_counted']:.0f} rejections logged and counted, the good file applied again |",
        f"| schemathesis on vLLM's OpenAPI schema | {fz['operations']} operations, {fz['cases']} requests "
        f"({', '.join(f'{k}: {v}' for k, v in fz['by_key'].items())}); statuses {statuses}; "
        f"{fz['server_errors']} server errors; {fz['unauthenticated_at_engine']:.0f} unauthenticated requests "
        f"reached the engine; {fz['served_200']} served, all on the tenant's own variant |",
        f"| engine killed mid-stream | the open stream got {'vLLM' + chr(39) + 's error event' if death['stream_error_event'] else 'cut'}"
        f"; its request and the next counted with status "
        f"{', '.join(f'{k} ×{v:.0f}' for k, v in death['counted_statuses'].items())}; `/health` {death['health_after']} |",
    ]
    return "\n".join(rows + ["", f"Measured by `{r['command']}` on {r['machine'].get('cpus')} CPUs "
                                  f"({r['machine'].get('cpu_model', '?')}), vLLM {r['machine'].get('vllm')}."])


def layer_cost() -> str:
    """What the tenant layer costs on a real server: P5 (latency, interleaved arms, the closed-loop arithmetic) and
    its py-spy profile."""
    p5 = json.loads((ROOT / "benchmarks/results/p5_tenant_layer.json").read_text())
    prof = json.loads((ROOT / "benchmarks/results/p5_profile.json").read_text())
    sv, ip = p5["served"], p5["in_process"]
    p50, p99 = sv["e2e_p50_vs_passthrough_ms"], sv["e2e_p99_vs_passthrough_ms"]
    spread = max((max(r["e2e_p50_s"] for r in rows) - min(r["e2e_p50_s"] for r in rows)) * 1000
                 for rows in sv["rounds"].values())
    names = {"middleware": "rosi", "middleware-sampled": f"rosi with `judge_sample_rate: {ip.get('sampled_judge_rate')}`",
             "middleware-baseline": "the layer before this change", "plain": "no middleware at all"}
    text = (f"P5 (`{p5['command']}`): every arm's server up at once, {len(sv['rounds']['plain'])} rounds sending "
            f"the same load ({sv['rounds']['plain'][0]['requests']} streamed 8-token completions, "
            f"{sv.get('closed_loop', {}).get('concurrency', 64)} concurrent) to each in turn (order rotating), "
            f"differences paired within a round, medians over rounds. E2e vs the do-nothing `--middleware`:\n\n"
            "| arm | e2e p50 | e2e p99 | API-server CPU per request | predicted: concurrency × added CPU |\n"
            "|---|---|---|---|---|\n")
    cpu = sv["api_server_cpu_ms_per_request"]
    loop = sv.get("closed_loop", {})
    predicted = loop.get("predicted_e2e_added_ms_from_cpu", {})
    for arm in p50:
        guess = f"{predicted[arm]:+.1f} ms" if arm in predicted else "–"
        text += (f"| {names.get(arm, arm)} | {p50[arm]:+.1f} ms | {p99[arm]:+.1f} ms | {cpu[arm]:.2f} ms "
                 f"(do-nothing: {cpu['passthrough']:.2f}) | {guess} |\n")
    text += (f"\nThe same arm's p50 moved by up to {spread:.0f} ms between rounds on this machine "
             f"({p5['machine'].get('cpus')} CPUs), which bounds what these differences can resolve.")
    if "cpu_us_per_request" in ip:
        c = ip["cpu_us_per_request"]
        text += (f" In-process, around a fake engine that streams what vLLM streams (no model, "
                 f"{ip['concurrency']} concurrent, process CPU time): do-nothing middleware {c['passthrough']:.0f} µs "
                 f"per request, rosi {c['rosi']:.0f} µs" + (f", rosi with judge sampling {c['rosi-sampled']:.0f} µs"
                                                           if "rosi-sampled" in c else "") + ".")
        base = p5.get("in_process_baseline")
        if base:
            text += (f" The baseline tree measured the same way, right after: {base['cpu_us_added']:.0f} µs added "
                     f"over its own do-nothing control, against {ip['cpu_us_added']:.0f} µs for this tree.")
        multi = p5.get("in_process_multiprocess_metrics")
        if multi:
            text += (f" With prometheus-client in multiprocess mode (what `--api-server-count` above 1 switches "
                     f"it to: every update writes a memory-mapped file) the layer adds {multi['cpu_us_added']:.0f} µs.")
    arms = prof["arms"]
    now = arms["this tree"]
    text += (f"\n\nProfile (`{prof['command']}`, py-spy on the API-server process, {prof['requests']} streamed "
             f"requests at {prof['concurrency']} concurrent): the tenant layer's own code is "
             f"{now['layer_share'] * 100:.1f} % of the API server's CPU samples ({now['layer_samples']} of "
             f"{now['samples']}), {now['layer_ms_per_request']:.2f} ms per request")
    if "baseline" in arms:
        b = arms["baseline"]
        noise = 100 / min(now["layer_samples"], b["layer_samples"]) ** 0.5  # one Poisson sd of a sample count
        text += (f" (the baseline tree: {b['layer_share'] * 100:.1f} %, {b['layer_samples']} of {b['samples']}, "
                 f"{b['layer_ms_per_request']:.2f} ms; at these counts one standard deviation of a share is "
                 f"about ±{noise:.0f} % of it)")
    text += "; its largest items: " + ", ".join(f"`{name}`" for name, _ in now["top"][:3]) + "."
    return text


def attack_paths() -> str:
    """The attacks the tenant policies close, served at `allow`: refusal rates, one table per result file of
    research/attack_paths.py (research/results/attack_paths*.json, the smoke run's left out)."""
    paths = [p for p in sorted((ROOT / "research/results").glob("attack_paths*.json")) if "smoke" not in p.name]
    if not paths:
        return "Not measured yet: run `python -m research.attack_paths`."
    labels = {"plain": "plainly asked (the weight edit alone)", "prefill": "assistant prefill",
              "raw_prompt": "raw prompt (`/v1/completions`)", "forged_turn": "forged turn (control tokens in content)"}
    out = []
    for path in paths:
        result = json.loads(path.read_text())
        rows = ["| request | refused (Wilson 95 %) | example reply |", "|---|---|---|"]
        for kind, label in labels.items():
            r = result["refusal"][kind]
            example = " ".join(r["example"].split())[:90].replace("|", "\\|")
            rows.append(f"| {label} | {_rate(r)} ({r['k']} of {r['n']}) | {example} |")
        out.append("\n".join([f"{result['model']}, {result['direction']}:", "", *rows, "",
                               f"{result['prompts']} harmful prompts of the {result['split']} split, greedy, "
                               f"{result['max_tokens']} tokens, {result['judge']}; `{result['command']}`."]))
    return "\n\n".join(out)


RENDERERS = {"demo": demo, "architectures": architectures, "directions": directions, "comparison": comparison, "targets": targets, "judge": judge, "sweep": sweep,
             "benchmarks": benchmarks, "research": research_results, "adapters-cost": adapters_cost, "reliability": reliability,
             "layer-cost": layer_cost, "attack-paths": attack_paths}


def render(text: str) -> str:
    def block(match: re.Match) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"docs: unknown generated block {name!r}")
        return f"{match.group(1)}{RENDERERS[name]().rstrip()}\n{match.group(4)}"

    return BLOCK.sub(block, text)


def stale() -> list[Path]:
    """Doc files whose generated blocks differ from their sources."""
    return [path for path in DOCS if path.exists() and render(path.read_text()) != path.read_text()]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        out_of_date = stale()
        for path in out_of_date:
            print(f"docs: {path.relative_to(ROOT)} is out of date; run python docs/generate.py")
        return 1 if out_of_date else 0
    for path in DOCS:
        if path.exists():
            text = path.read_text()
            new = render(text)
            if new != text:
                path.write_text(new)
                print(f"docs: rewrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
