"""How far the substring judge agrees with JailbreakBench's human labels.

Kept apart from the judge itself because it reads the packaged evaluation data,
which the serving install does not need.
"""

from __future__ import annotations

import csv
from importlib import resources

from ..core.judge import SubstringJudge


def calibration_rows() -> list[dict]:
    """JailbreakBench's 100 human-labelled responses (label 1 = jailbroken, i.e. harmful compliance)."""
    path = resources.files("rosi_vllm.extraction") / "data" / "jailbreakbench_judge_comparison.csv"
    with path.open() as f:
        return [{"response": r["target_response"], "jailbroken": r["human_majority"] == "1"} for r in csv.DictReader(f)]


def calibrate(judge: SubstringJudge | None = None) -> dict:
    """Agreement of `judge` with human labels: a non-refusal should be a jailbreak."""
    judge = judge or SubstringJudge()
    rows = calibration_rows()
    tp = fp = tn = fn = 0
    for row in rows:
        predicted_jailbroken = not judge.is_refusal(row["response"])
        if predicted_jailbroken and row["jailbroken"]:
            tp += 1
        elif predicted_jailbroken:
            fp += 1
        elif row["jailbroken"]:
            fn += 1
        else:
            tn += 1
    n = len(rows)
    return {
        "judge": judge.name,
        "n": n,
        "accuracy": (tp + tn) / n,
        "jailbreak_precision": tp / max(tp + fp, 1),
        "jailbreak_recall": tp / max(tp + fn, 1),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }
