"""Rank-1 LoRA adapters that move a model baked at α₀ to another α, built on demand and cached.

Each adapter is ``edit(α) − edit(α₀)`` (`adapters.lora_tensors` with a baseline).
Weights baked at α₀ are ``W + α₀·ŝ·w̄ᵀ`` (w̄ from the *unedited* W), so for v1
and v2 the adapter adds ``(α − α₀)·ŝ·w̄ᵀ``: a rank-1 LoRA with
``B = (α − α₀)·ŝ`` and ``A = w̄ᵀ``, where w̄ must come from the unedited
checkpoint on disk (not from the baked weights). A threshold (v3) direction
transplants a neuron: between two α ≠ 0 only its down column moves; to or from
α = 0 its gate row, up row and down column go back to the checkpoint's. The base
model is the variant α = 0, the unedited checkpoint for every format. Δ may be
negative here even when no served α is: the operator-facing α checks live in the
tenant config.

No vLLM imports: the resolver (vLLM glue) asks this store for a folder.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import torch

from ..core.adapters import write_adapter, writer_read_vectors
from ..core.checkpoint import model_shape
from ..core.direction_file import DirectionFile, load_direction
from ..core.errors import RosiError
from ..core.injection_plan import build_plan
from ..core.loader_config import RosiLoaderConfig

#: where the operator points the cache (named in the error a read-only or full folder gives)
ADAPTER_CACHE_HINT = "ROSI_ADAPTER_CACHE"


class VariantAdapterStore:
    def __init__(self, model_dir: str | Path, loader_config: RosiLoaderConfig, baked_alpha: float,
                 cache_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.loader_config = loader_config
        self.baked_alpha = baked_alpha
        self.direction: DirectionFile = load_direction(loader_config.direction)
        self.shape = model_shape(self.model_dir)
        self.cache_dir = Path(cache_dir) / f"{self.direction.direction_id}-baked{baked_alpha:g}"
        self._reads: dict[str, torch.Tensor] | None = None
        self._lock = threading.Lock()

    def _plan(self, alpha: float):
        cfg = self.loader_config
        # Fingerprint already verified by the loader for these very files.
        return build_plan(self.direction, self.shape, alpha=alpha, targets=cfg.targets, allow_negative_alpha=True,
                          sandwich_norm=cfg.sandwich_norm, checkpoint_fingerprint=None)

    def adapter_for(self, alpha: float) -> Path:
        """Folder of the PEFT adapter serving `alpha` on the baked weights (built once)."""
        out = self.cache_dir / f"alpha{alpha:g}"
        if (out / "adapter_config.json").exists():
            return out
        with self._lock:
            if (out / "adapter_config.json").exists():
                return out
            plan = self._plan(alpha)
            if self._reads is None:
                self._reads = writer_read_vectors(plan, self.model_dir)
            tmp = out.with_name(out.name + ".tmp")
            try:
                write_adapter(plan, self.model_dir, tmp, reads=self._reads, baseline=self._plan(self.baked_alpha))
                tmp.replace(out)  # adapter_config.json appears only with a complete folder
            except Exception as exc:  # read-only or full cache folder: say so, leave no half-written folder
                # (safetensors reports a full disk as its own SafetensorError, not OSError)
                shutil.rmtree(tmp, ignore_errors=True)
                reason = getattr(exc, "strerror", None) or exc
                raise RosiError(f"rosi: cannot write the adapter for alpha {alpha:g} to the cache folder "
                                f"{self.cache_dir} ({ADAPTER_CACHE_HINT}): {reason}") from None
        return out
