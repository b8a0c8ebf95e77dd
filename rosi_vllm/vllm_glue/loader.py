"""The ``rosi`` load format: vLLM's default loader with ROSI applied in-stream.

Thin glue by design. vLLM's `DefaultModelLoader` finds the checkpoint files and
yields full (unsharded) checkpoint tensors; `model.load_weights` then shards,
fuses and places them. We sit exactly between the two, so every worker edits
the full tensor (the row mean w̄ needs all of W) and vLLM's own tensor parallel
sharding, fused projections and online quantization see ordinary weights; a
pipeline stage edits only the layers it keeps (`kept_by`). All decisions are
made by `injection_plan`, which knows no vLLM.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator

import torch
from torch import nn
from vllm.config import ModelConfig, get_current_vllm_config_or_none
from vllm.config.load import LoadConfig
from vllm.logger import init_logger
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

from ..core.checkpoint import model_shape_from_hf_config, tensor_records
from ..core.direction_file import load_direction
from ..core.errors import RosiError
from ..core.fingerprint import fingerprint_records
from ..core.injection_plan import InjectionPlan, InjectionRun, build_plan
from ..core.loader_config import RosiLoaderConfig
from .compat import checkpoint_files

# Under the "vllm" logger namespace so vLLM's own handlers and levels apply.
logger = init_logger("vllm.rosi")

LOAD_FORMAT = "rosi"


class RosiModelLoader(DefaultModelLoader):
    """``--load-format rosi``: load the checkpoint as ``auto`` would, hardened on the way in."""

    def __init__(self, load_config: LoadConfig):
        self.rosi_config, passthrough = RosiLoaderConfig.from_extra_config(
            load_config.model_loader_extra_config
        )
        # The default loader picks files by load_format and rejects keys it does
        # not know, so it gets an "auto" view of the config with our keys removed.
        inner = dataclasses.replace(load_config, load_format="auto", model_loader_extra_config=passthrough)
        super().__init__(inner)
        self._plan: InjectionPlan | None = None
        self._run: InjectionRun | None = None  # the latest pass over the checkpoint

    def _build_plan(self, model_config: ModelConfig) -> InjectionPlan:
        cfg = self.rosi_config
        direction_file = load_direction(cfg.direction)
        fingerprint = None
        if cfg.verify_fingerprint:
            files, use_safetensors = checkpoint_files(self, model_config)
            if not use_safetensors:
                raise RosiError(
                    "rosi: fingerprint verification needs a safetensors checkpoint; convert it or set "
                    '"verify_fingerprint": false'
                )
            fingerprint = fingerprint_records(tensor_records(files))
        return build_plan(
            direction_file,
            model_shape_from_hf_config(model_config.hf_config),
            alpha=cfg.alpha,
            targets=cfg.targets,
            allow_negative_alpha=cfg.allow_negative_alpha,
            sandwich_norm=cfg.sandwich_norm,
            checkpoint_fingerprint=fingerprint,
        )

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        started = time.perf_counter()
        vllm_config = get_current_vllm_config_or_none()
        if vllm_config is not None:
            refuse_cpu_eager_pipeline(vllm_config)
        self._plan = self._build_plan(model_config)
        validated = time.perf_counter()
        super().load_weights(model, model_config)
        logger.info(
            "%s (file %s; validation %.1f ms, load total %.2f s)",
            self._run.summary(),
            self.rosi_config.direction,
            (validated - started) * 1000,
            time.perf_counter() - started,
        )

    @torch.no_grad()
    def get_all_weights(
        self, model_config: ModelConfig, model: nn.Module
    ) -> Generator[tuple[str, torch.Tensor], None, None]:
        if self._plan is None:  # load_weights builds it; guard direct callers too
            self._plan = self._build_plan(model_config)
        self._run = self._plan.start()
        yield from self._plan.apply(super().get_all_weights(model_config, model), kept_by(model), run=self._run)


def kept_by(model: nn.Module):
    """Under pipeline parallelism: which streamed tensors this stage keeps (None: all of them).

    Every stage reads the whole checkpoint, and the model's ``load_weights`` drops
    the layers of other stages with ``is_pp_missing_parameter``. The same
    predicate here skips the delta math for exactly those, so each stage edits
    only its own layers; a name it does not recognise counts as kept (edited).
    """
    from vllm.distributed.parallel_state import (
        get_pp_group,
        model_parallel_is_initialized,
    )
    from vllm.model_executor.models.utils import is_pp_missing_parameter

    if not model_parallel_is_initialized() or get_pp_group().world_size == 1:
        return None  # one stage, or a loader driven outside vLLM's workers (benchmarks)
    return lambda name: not is_pp_missing_parameter(name, model)


def refuse_cpu_eager_pipeline(vllm_config) -> None:
    """vLLM 0.32's CPU runner cannot run pipeline stages in eager mode: say so before the first request.

    It allocates the stage-to-stage buffers only in its warm-up, which it skips at
    compilation mode NONE (``--enforce-eager``, LoRA on CPU), so the server comes up
    and then fails every request (``assert self.intermediate_tensors is not None``),
    whatever the load format. Failing at load with the fix is kinder.
    """
    from vllm.config import CompilationMode
    from vllm.platforms import current_platform

    if (current_platform.is_cpu() and vllm_config.parallel_config.pipeline_parallel_size > 1
            and vllm_config.compilation_config.mode == CompilationMode.NONE):
        raise RosiError(
            "rosi: pipeline parallelism on vLLM's CPU backend needs a compilation mode other than NONE "
            "(vLLM 0.32's CPU runner skips the warm-up that allocates the stage buffers in eager mode, and "
            "every request would fail): drop --enforce-eager and pass -cc '{\"mode\": 2, \"backend\": \"eager\"}'; "
            "LoRA (the per-tenant tier) forces eager mode on CPU, so it cannot be combined with PP there")
