"""`rosi inject`: write a hardened copy of a checkpoint for engines other than vLLM.

Same `InjectionPlan` as the loader, so the two paths cannot drift apart. The
output keeps the input's file layout (shards, index, tokenizer, config) so any
engine that read the original reads the copy, and it gets a
`rosi_injection.json` manifest saying what was done to it. Written to a
temporary folder and renamed at the end: a failed run leaves no half-hardened
checkpoint behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

from .. import __version__
from .architectures import SandwichNormPolicy
from .checkpoint import model_shape, safetensors_files
from .direction_file import load_direction
from .errors import RosiError
from .fingerprint import fingerprint_checkpoint
from .injection_plan import InjectionRun, build_plan

MANIFEST = "rosi_injection.json"


def inject_checkpoint(
    model_dir: str | Path,
    direction_path: str | Path,
    out_dir: str | Path,
    *,
    alpha: float | None = None,
    targets: tuple[str, ...] | None = None,
    allow_negative_alpha: bool = False,
    sandwich_norm: SandwichNormPolicy = SandwichNormPolicy.REFUSE,
    verify_fingerprint: bool = True,
    progress: bool = True,
) -> tuple[Path, InjectionRun]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RosiError(f"rosi: output folder {str(out_dir)!r} exists and is not empty")
    files = safetensors_files(model_dir)
    source_fp = fingerprint_checkpoint(model_dir)
    direction_file = load_direction(direction_path)
    plan = build_plan(
        direction_file,
        model_shape(model_dir),
        alpha=alpha,
        targets=targets,
        allow_negative_alpha=allow_negative_alpha,
        sandwich_norm=sandwich_norm,
        checkpoint_fingerprint=source_fp if verify_fingerprint else None,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".rosi-inject-", dir=out_dir.parent))
    try:
        for item in model_dir.iterdir():
            if item.is_file() and item not in files and item.name != MANIFEST:
                shutil.copy2(item, staging / item.name)
        run = plan.start()
        for number, path in enumerate(files, 1):
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata()
                tensors = {name: run.edit(name, f.get_tensor(name)) for name in f.keys()}
            save_file(tensors, str(staging / path.name), metadata=metadata)
            if progress:
                print(f"rosi inject: shard {number}/{len(files)} {path.name}", file=sys.stderr, flush=True)
        run.check_complete()
        manifest = {
            "tool": f"rosi-vllm {__version__}",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source_model": str(model_dir.resolve()),
            "source_fingerprint": source_fp,
            "direction_file": str(Path(direction_path).resolve()),
            "direction_id": plan.direction_id,
            "alpha": plan.alpha,
            "targets": list(plan.targets),
            "matrices_edited": dict(run.stats.edited),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir, run
