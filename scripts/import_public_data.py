"""Rebuild the package's copies of AlphaSteer's train/val prompts and of XSTest from their public repositories.

    git clone https://github.com/AlphaLab-USTC/AlphaSteer          # Apache-2.0
    git clone https://github.com/paul-rottger/exaggerated-safety   # CC-BY-4.0
    python3 scripts/import_public_data.py --alphasteer AlphaSteer --xstest exaggerated-safety

Why a filter and not a copy: the fit must never see a test-split prompt, and `rosi harden` fits on the
AlphaSteer sets in the *extraction* and *validation* splits only. So every row that near-duplicates (word
Jaccard ≥ 0.5, stricter than the splits' own 0.7) a harmful benchmark goal of any split (AlphaSteer's harmful
training set repeats AdvBench, HarmBench and JailbreakBench goals, whose phrasing the benchmark files
already give the fit), a test-split prompt (JailbreakBench, the written style-shift set, Do-Not-Answer) or a
row of the other split is dropped, as are non-English rows and rows longer than `MAX_CHARS` (fit time grows
with length). AlphaSteer's ``data/instructions/test/`` folder is never read: it is reserved for held-out
evaluation. Run from the repository root; the files it writes are listed in `rosi_vllm/extraction/data/README.md`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

#: longest prompt kept (characters)
MAX_CHARS = 600
#: word Jaccard at which a row counts as a near-duplicate
NEAR = 0.5
#: rows kept per file (the fit and the selection use prefixes; more only grows the package)
KEEP = {"harmful_extraction": 400, "harmful_validation": 300, "benign_extraction": 300, "benign_validation": 150}
DATA = Path("rosi_vllm/extraction/data")


def _queries(path: Path) -> list[str]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [" ".join(r["query"].split()) for r in rows if isinstance(r.get("query"), str)]


def _english(text: str) -> bool:
    return sum(c.isascii() for c in text) >= 0.98 * len(text)


def main() -> None:
    from rosi_vllm.extraction import forms, prompts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alphasteer", type=Path, required=True, help="a checkout of AlphaLab-USTC/AlphaSteer")
    ap.add_argument("--xstest", type=Path, required=True, help="a checkout of paul-rottger/exaggerated-safety")
    args = ap.parse_args()
    train_val = args.alphasteer / "data" / "instructions" / "train_val"

    words = prompts._words
    benchmark = [words(t) for s in prompts.SPLITS for t in prompts.harmful(s)]
    test = ([words(t) for t in prompts.harmful("test")]
            + [words(p.text) for p in forms.written("harmful") + forms.written("benign") + forms.donotanswer()])
    kept: list[frozenset] = []

    def take(texts, n: int, *, drop_benchmark: bool) -> list[str]:
        out = []
        for text in texts:
            w = words(text)
            if not (20 <= len(text) <= MAX_CHARS and _english(text)) or text in out:
                continue
            against = test + kept + (benchmark if drop_benchmark else [])
            if any(prompts._near_duplicate(w, other, NEAR) for other in against):
                continue
            out.append(text)
            kept.append(w)
            if len(out) == n:
                break
        return out

    benign = _queries(train_val / "benign_val.json")
    borderline = _queries(train_val / "borderline_val.json")
    files = {
        "harmful_extraction": take(_queries(train_val / "harmful_train_1000.json"), KEEP["harmful_extraction"],
                                   drop_benchmark=True),
        "harmful_validation": take(_queries(train_val / "harmful_val.json"), KEEP["harmful_validation"],
                                   drop_benchmark=True),
        # benign fit: everyday requests and borderline ones (harm-adjacent wording, safe to answer), alternating,
        # so the gate learns that wording is not harm; benign validation: everyday requests only, since the
        # selection holds benign refusal to base + 5 points and borderline requests have a budget of their own
        # (the unedited SmolLM2 refused 14 % of a validation mix with AlphaSteer's borderline requests in it)
        "benign_extraction": take(prompts.interleave(benign[:400], borderline), KEEP["benign_extraction"],
                                  drop_benchmark=False),
        "benign_validation": take(benign[400:], KEEP["benign_validation"], drop_benchmark=False),
    }
    for name, rows in files.items():
        (DATA / f"alphasteer_{name}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
        print(f"{DATA}/alphasteer_{name}.txt: {len(rows)} rows")
    shutil.copyfile(args.alphasteer / "LICENSE", DATA / "licenses" / "alphasteer-LICENSE")
    shutil.copyfile(args.xstest / "xstest_prompts.csv", DATA / "xstest_prompts.csv")
    shutil.copyfile(args.xstest / "LICENSE", DATA / "licenses" / "xstest-LICENSE")
    print(f"{DATA}/xstest_prompts.csv and licenses/ copied")


if __name__ == "__main__":
    main()
