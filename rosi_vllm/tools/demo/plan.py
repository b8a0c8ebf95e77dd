"""What the demo serves and asks: the shipped direction, the two tenants, the prompts.

Pure decisions, no server. The direction is the one ``directions/index.yaml``
marks ``recommended: true`` for the demo model (one per model: the file whose
verdict the project stands behind), so a better direction shipped later becomes
the demo's by moving the mark, without a code change. Its test-split numbers are
read from the entry's ``rosi eval`` result files, not copied into the index.

Tenants: one server, the way docs/tenants.md deploys ROSI. The recommended α
is baked into the weights at load (``--load-format rosi``: the hardened tenant
costs nothing), and the base arm is the tenant layer's variant α = 0, a rank-1
LoRA adapter of −α on the same weights. That is what production does to keep an
unhardened arm for an A/B comparison on one copy of the weights; the opposite
(base weights, hardened as an adapter) is not what the tenant layer offers,
because its baked variant is the loader's α. Keys are random per run and the
config stores only their sha256, as an operator's would.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from ...core.errors import RosiError

#: arms in display order: (arm, tenant name, variant name, variant value in the tenant config)
ARMS = (("base", "demo-base", "base", 0), ("hardened", "demo-hardened", "hardened", "baked"))
PROMPT_SETS = ("harmful", "benign")
SPLIT = "test"


def directions_dir() -> Path:
    """The repository's ``directions/`` folder (the package is installed from a clone, editable)."""
    return Path(__file__).resolve().parents[3] / "directions"


@dataclass(frozen=True)
class DirectionChoice:
    path: Path
    model: str
    direction_id: str
    alpha: float
    read: str  # "mean" (v1), "gated" (v2) or "threshold" (v3)
    #: the shipped test-split measurement: {"base"|"rosi": {metric: {"rate", "k", "n", "ci95"}}}
    measured: dict
    results: str  # the result file it comes from
    reason: str


#: the rates a `rosi eval` report holds per prompt set, as the demo shows them
MEASURED = ("harmful_refusal", "benign_refusal", "borderline_refusal", "jailbreak_attack_success", "degenerate")


def measured(result: dict) -> dict:
    """The test-split rates of one `rosi eval` report ({metric: {"rate", "k", "n", "ci95"}}, KL to 4 places)."""
    out = {k: result[k] for k in MEASURED if k in result}
    if "benign_kl_nats" in result:
        out["benign_kl_nats"] = round(result["benign_kl_nats"], 4)
    return out


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RosiError(f"rosi: cannot read the shipped measurement {path} ({exc})") from None


def choose_direction(model: str, index_path: Path | None = None) -> DirectionChoice:
    """The shipped direction `directions/index.yaml` marks ``recommended: true`` for `model`."""
    index_path = index_path or directions_dir() / "index.yaml"
    try:
        index = yaml.safe_load(index_path.read_text())
    except OSError as exc:
        raise RosiError(f"rosi: cannot read the shipped directions index {index_path} ({exc.strerror}); "
                        "run the demo from a clone of rosi-vllm (scripts/setup.sh installs it editable)") from None
    entries = [e for e in index.get("directions", []) if e.get("model") == model]
    marked = [e for e in entries if e.get("recommended") is True]
    if len(marked) != 1:
        raise RosiError(f"rosi: {len(marked)} shipped directions for {model} are marked recommended in {index_path} "
                        f"(of {len(entries)}); exactly one must be")
    best = marked[0]
    root = index_path.parent.parent  # result paths are relative to the repository root, directions/ sits in it
    results = {"rosi": measured(_read_json(root / best["results"])),
               "base": measured(_read_json(root / best["base_results"]))}
    rosi = results["rosi"]
    return DirectionChoice(
        path=index_path.parent / best["file"], model=model, direction_id=best["direction_id"],
        alpha=float(best["recommended_alpha"]), read=best.get("read", "mean"), measured=results,
        results=best["results"],
        reason=f"the recommended {model} direction of {len(entries)} shipped "
               f"({100 * rosi['harmful_refusal']['rate']:.0f} % harmful vs {100 * rosi['benign_refusal']['rate']:.0f} % benign "
               f"refused on the test split, n={rosi['harmful_refusal']['n']} per set)",
    )


def demo_prompts(per_set: int) -> list[tuple[str, str]]:
    """(set, prompt): the first `per_set` harmful and benign prompts of the test split, in file order.

    The first ones, not picked ones: the demo shows what the direction does on
    prompts nobody chose for it (the extraction never saw the test split).
    """
    from ...extraction.prompts import harmful, harmless

    if per_set < 1:
        raise RosiError(f"rosi: --prompts must be at least 1, got {per_set}")
    sets = {"harmful": harmful(SPLIT), "benign": harmless(SPLIT)}
    return [(name, prompt) for name in PROMPT_SETS for prompt in sets[name][:per_set]]


def new_keys() -> dict[str, str]:
    """arm → a fresh API key for this run."""
    return {arm: f"sk-rosi-demo-{arm}-{secrets.token_hex(12)}" for arm, *_ in ARMS}


def tenant_config(keys: dict[str, str]) -> dict:
    """The demo's tenant config: one tenant per arm, each pinned to its variant."""
    return {
        "version": 1,
        "variants": {variant: value for _, _, variant, value in ARMS},
        "tenants": {tenant: {"api_key_sha256": [hashlib.sha256(keys[arm].encode()).hexdigest()],
                             "default_variant": variant}
                    for arm, tenant, variant, _ in ARMS},
    }


def write_tenant_config(path: Path, keys: dict[str, str]) -> Path:
    header = ("# Written by `rosi demo`: two tenants on one server, one per arm (docs/tenants.md).\n"
              "# 'baked' is the loader's alpha; 0 is the unedited model, served as a rank-1 adapter.\n")
    path.write_text(header + yaml.safe_dump(tenant_config(keys), sort_keys=False))
    return path
