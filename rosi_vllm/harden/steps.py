"""The one module of `rosi harden` that imports the extraction library and the methods' fits.

Every function `rosi harden` calls from `rosi_vllm.extraction` (and the direction-file helpers) is bound here
and nowhere else, so moving those modules means editing these imports only. Imports are at call time where
they pull in transformers or vLLM, so `rosi harden --help` and the pure rules stay light.
"""

from __future__ import annotations


def extraction():
    """The extraction library's entry points `rosi harden` uses, as one namespace."""
    from types import SimpleNamespace

    from ..core.direction_file import save_direction
    from ..extraction import prompts
    from ..extraction.eval_extras import ExtraSets
    from ..extraction.evaluate import plot_eval, run_eval, write_report
    from ..extraction.extract import Extraction, last_token_residuals, resolve_system_prompt
    from ..extraction.hf_eval import added_to_outputs, generate
    from ..extraction.hf_model import chat_texts, load_hf_model
    from ..extraction.scoring import PromptSets
    from ..extraction.selection import direction_file_for
    from ..extraction.writer_inputs import find_writers
    from ..methods.gated.fit import extract_gated
    from ..methods.threshold.fit import extract_threshold

    return SimpleNamespace(
        save_direction=save_direction,
        prompts=prompts,
        ExtraSets=ExtraSets,
        plot_eval=plot_eval,
        run_eval=run_eval,
        write_report=write_report,
        Extraction=Extraction,
        chat_texts=chat_texts,
        last_token_residuals=last_token_residuals,
        load_hf_model=load_hf_model,
        resolve_system_prompt=resolve_system_prompt,
        extract_gated=extract_gated,
        generate=generate,
        added_to_outputs=added_to_outputs,
        find_writers=find_writers,
        PromptSets=PromptSets,
        direction_file_for=direction_file_for,
        extract_threshold=extract_threshold,
    )
