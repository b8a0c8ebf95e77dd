"""The model card `rosi harden` writes beside the direction file: markdown, from its report alone."""

from __future__ import annotations

ROWS = (("harmful_refusal", "harmful refused (test)"), ("style_shift_harmful_refusal", "harmful refused (style shift)"),
        ("benign_refusal", "benign refused"), ("borderline_refusal", "borderline refused"),
        ("xstest_safe_refusal", "XSTest safe refused"), ("jailbreak_attack_success", "jailbreak success"),
        ("jailbreak_family_attack_success", "public jailbreak success"), ("degenerate", "degenerate"))


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    lo, hi = entry["ci95"]
    return f"{entry['rate']:.1%} [{lo:.1%}, {hi:.1%}] ({entry['k']}/{entry['n']})"


def render_card(report: dict) -> str:
    """Markdown: what was edited, base → hardened per metric with Wilson intervals, the checks, the verdict, the
    exact `vllm serve` line and the command that reproduces the file."""
    base, hard = report.get("base_eval", {}), report.get("hardened_eval", {})
    edit = report.get("edit", {})
    lines = [
        f"# Hardened: {report['model']}",
        "",
        f"**Verdict.** {report['verdict']}",
        "",
        "## What was edited",
        "",
        f"- method: `{report['method']}` ({report['method_rule']})",
        f"- write direction: {report['write']['method']} at layer {report['write']['layer']} "
        f"(system prompt for extraction: {'safety' if report['write']['system_prompt'] else 'none'})",
        f"- window: {edit.get('window')}, α {edit.get('alpha')}",
        f"- direction file: `{report['direction_file']}`",
        "",
        "## Base → hardened (test split, greedy, substring judge, Wilson 95 % intervals)",
        "",
        "| metric | base | hardened |",
        "|---|---|---|",
    ]
    for key, label in ROWS:
        if key in base or key in hard:
            lines.append(f"| {label} | {_cell(base.get(key))} | {_cell(hard.get(key))} |")
    if "benign_kl_nats" in hard:
        lines.append(f"| benign KL (nats) | 0 | {hard['benign_kl_nats']:.4f} |")
    gate = hard.get("gate_auroc_by_form", {}).get("per_form")
    if gate:
        lines += ["", "## Gate AUROC per request form (style-shift sets, read on the unedited checkpoint)", "",
                  "| form | harmful vs benign of the form | vs every benign | harmful / benign prompts |",
                  "|---|---|---|---|"]
        for form, row in gate.items():
            matched = "–" if row["matched"] is None else f"{row['matched']:.3f}"
            lines.append(f"| {form} | {matched} | {row['vs_all_benign']:.3f} | {row['n_harmful']} / {row['n_benign']} |")
    lines += ["", "## Targets", "", "| target | value | limit | met |", "|---|---|---|---|"]
    for c in report.get("checks", []):
        relation = "≥" if c["kind"] == "min" else "≤"
        value = f"{c['value']:.3f}" if c["name"] == "KL" else f"{c['value']:.1%}"
        limit = f"{c['limit']:.3f}" if c["name"] == "KL" else f"{c['limit']:.1%}"
        lines.append(f"| {c['name']} | {value} | {relation} {limit} | {'yes' if c['ok'] else 'NO'} |")
    lines += [
        "",
        f"Base rates: {report.get('base_backend', 'transformers')} generation; hardened rates: vLLM with "
        "`--load-format rosi` (the real loader).",
        "",
        "## Serve",
        "",
        "```",
        report["serve"],
        "```",
        "",
        "## Reproduce",
        "",
        "```",
        report["reproduce"],
        "```",
        "",
    ]
    return "\n".join(lines)
