"""`rosi extract`: find a refusal direction and select its layer and α."""

from __future__ import annotations

from ..methods.base import MIN_AUROC
from ..methods.gated.config import GatedConfig
from ..methods.mean.config import MeanConfig
from ..methods.threshold.config import DEFAULT_PRESET, PRESETS, ThresholdConfig
from ._args import floats, ints, model_path

#: `--method` → its settings (the threshold method takes its own from its --preset row); each config's defaults
#: are the only ones: flags whose default depends on the method are None in argparse, filled from here, so a
#: given flag is seen, and their help text is written from the same values
CONFIGS = {"mean-diff": MeanConfig(), "refusal-contrast": MeanConfig(), "refusal-contrast-reply": MeanConfig(),
           "gated": GatedConfig()}
METHOD_DEPENDENT = ("n_harmful", "wrapped_goals", "answer_tokens", "val_n", "stage1_n", "stage1_tokens",
                    "max_new_tokens", "finalists", "budget_steps", "grow_steps", "forms", "batch_size", "dtype", "alphas")
#: threshold: `extract_threshold` keyword ← flag (argparse dest), for the ones a preset row sets
THRESHOLD_FLAGS = {"n_harmful": "n_harmful", "wrapped": "wrapped_goals", "answer_tokens": "answer_tokens",
                   "val_n": "val_n", "stage1_n": "stage1_n", "stage1_tokens": "stage1_tokens",
                   "max_new_tokens": "max_new_tokens", "finalists": "finalists", "budget_steps": "budget_steps",
                   "grow_steps": "grow_steps", "forms": "forms",
                   "batch_size": "batch_size", "dtype": "dtype", "alphas": "alphas"}


def preset_settings(row: dict, args, flags: dict[str, str]) -> dict:
    """A preset's settings with every flag given on the command line in place of its value."""
    given = {key: getattr(args, dest) for key, dest in flags.items() if getattr(args, dest) is not None}
    return {**row, **given}


def defaults_text(dest: str) -> str:
    """"default …" for a flag whose default depends on the method, from the configs and the default preset."""
    by_value: dict = {}
    for method, config in CONFIGS.items():
        if hasattr(config, dest):
            by_value.setdefault(getattr(config, dest), []).append(method)
    parts = [f"{value}" if len(by_value) == 1 else f"{value} ({', '.join(methods)})"
             for value, methods in by_value.items()]
    preset_key = next((key for key, flag in THRESHOLD_FLAGS.items() if flag == dest), None)
    if preset_key is not None:
        parts.append(f"threshold: its --preset's, {DEFAULT_PRESET} {PRESETS[DEFAULT_PRESET][preset_key]}")
    return "default " + "; ".join(parts)


def cmd_extract(args) -> int:
    if args.method != "threshold":
        if args.preset:
            from ..core.errors import RosiError

            raise RosiError("rosi: --preset is for --method threshold; give the other methods' settings as flags")
        config = CONFIGS[args.method]
        for dest in METHOD_DEPENDENT:
            if getattr(args, dest) is None and hasattr(config, dest):
                setattr(args, dest, getattr(config, dest))
    if args.method == "threshold":
        from ..core.errors import RosiError
        from ..methods.threshold.fit import extract_threshold

        if not args.write_direction:
            raise RosiError("rosi: --method threshold needs --write-direction FILE (a direction for this checkpoint)")
        extract_threshold(model_path(args.model), args.write_direction, args.out, layers=args.layers,
                          threshold=ThresholdConfig.threshold if args.threshold is None else args.threshold, min_auroc=args.min_auroc,
                          report_dir=args.report_dir, preset=args.preset or DEFAULT_PRESET,
                          **preset_settings(PRESETS[args.preset or DEFAULT_PRESET], args, THRESHOLD_FLAGS))
        return 0
    if args.method == "gated":
        from ..core.errors import RosiError
        from ..methods.gated.fit import extract_gated

        if not args.write_direction:
            raise RosiError("rosi: --method gated needs --write-direction FILE (a v1 direction for this checkpoint)")
        from ..methods.gated.config import SETTINGS_GRID

        extract_gated(model_path(args.model), args.write_direction, args.out, layers=args.layers,
                      settings=SETTINGS_GRID if args.fit_grid else CONFIGS["gated"].settings, dtype=args.dtype,
                      alphas=args.alphas or CONFIGS["gated"].alphas, min_auroc=args.min_auroc, n_harmful=args.n_harmful,
                      val_n=args.val_n, stage1_n=args.stage1_n, stage1_tokens=args.stage1_tokens,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, report_dir=args.report_dir,
                      wrapped_goals=args.wrapped_goals, wrapped_benign=args.wrapped_benign,
                      answer_tokens=args.answer_tokens, finalists=args.finalists, budget_steps=args.budget_steps,
                      grow_steps=args.grow_steps, forms=args.forms,
                      trailing_wrappers=args.trailing_wrappers, harmful_answer_tokens=args.harmful_answer_tokens)
        return 0
    from ..methods.mean.fit import extract_and_select

    extract_and_select(
        model_path(args.model), args.out, model_label=args.model, method=args.method, harmful_file=args.harmful,
        harmless_file=args.harmless, n_pairs=args.n_pairs, n_harmful=args.n_harmful, layer=args.layer,
        alpha=args.alpha, layers=args.layers, alphas=args.alphas, system_prompt=args.system_prompt,
        val_n=args.val_n, stage1_n=args.stage1_n, max_new_tokens=args.max_new_tokens,
        stage1_tokens=args.stage1_tokens, batch_size=args.batch_size, report_dir=args.report_dir,
        backend=args.backend,
    )
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("extract", help="extract a refusal direction; select layer and alpha on validation prompts")
    p.add_argument("--model", required=True, help="checkpoint folder or registered model name")
    p.add_argument("--out", required=True)
    p.add_argument("--harmful", help="file, one instruction per line (default: packaged extraction split)")
    p.add_argument("--harmless", help="file, one instruction per line (default: packaged extraction split)")
    p.add_argument("--method", default="mean-diff",
                   choices=["mean-diff", "refusal-contrast", "refusal-contrast-reply", "gated", "threshold"],
                   help="mean-diff: harmful - harmless (the paper); refusal-contrast: harmful the model refused - "
                   "harmful it complied with, at the last prompt token; refusal-contrast-reply: the same, averaged "
                   "over the model's own reply tokens (see rosi_vllm/extraction/extract.py); gated: fit read vectors that "
                   "fire on harm for --write-direction's vector and write format v2 (rosi_vllm/methods/gated/fit.py); threshold: "
                   "transplant one MLP neuron per layer to push α·ReLU(g·x − t) along --write-direction's vector and "
                   "write format v3 (rosi_vllm/methods/threshold/fit.py)")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"threshold: t in units of the gate read's harmful median (default {ThresholdConfig.threshold})")
    p.add_argument("--write-direction", default=None, help="gated: v1 direction file whose vector is the write direction; threshold: v1 or v2")
    p.add_argument("--min-auroc", type=float, default=MIN_AUROC, help="gated: held-out gate AUROC a layer needs to be edited")
    p.add_argument("--fit-grid", action="store_true",
                   help="gated: try every (fit, rho, lambda) of methods.gated.config.SETTINGS_GRID, not only rho 0.7, "
                   "lambda 1 (the best in every recorded run) and the mean-difference baseline")
    p.add_argument("--preset", default=None, choices=["quick", "thorough"],
                   help=f"threshold: a row of methods.threshold.config.PRESETS (default {DEFAULT_PRESET}; quick: fit and selection in about "
                   "five minutes for a 0.5B model on 2 cores; thorough: the settings the shipped Qwen direction was "
                   "selected with); flags given override it")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="gated: the transformers model's dtype for every forward pass and generation ("
                   f"{defaults_text('dtype')}); bfloat16 is about twice as fast on CPUs with bf16 units and is "
                   "what vLLM serves")
    p.add_argument("--answer-tokens", type=int, default=None,
                   help="gated: length of the model's own greedy answer to each benign fit prompt, fitted as benign "
                   f"({defaults_text('answer_tokens')})")
    p.add_argument("--harmful-answer-tokens", type=int, default=GatedConfig.harmful_answer_tokens,
                   help="gated: also fit the positions of the model's own greedy answer of this many tokens to each "
                   "plain harmful goal as harmful, so the gate keeps firing once a reply has started (0: prompt only)")
    p.add_argument("--budget-steps", type=int, default=None,
                   help="gated: bisection steps toward the largest alpha within the KL budget, for each window whose "
                   "--alphas straddle it (forward passes only; 0: the grid only; " + defaults_text("budget_steps") + ")")
    p.add_argument("--grow-steps", type=int, default=None,
                   help="gated: doublings of alpha past the largest of --alphas for a window whose whole grid is within "
                   "the KL budget (forward passes only; 0: the grid caps alpha; " + defaults_text("grow_steps") + ")")
    p.add_argument("--forms", type=lambda s: tuple(f for f in s.split(",") if f), default=None, metavar="F,F",
                   help="gated/threshold: fit and validate on goals and harmless requests in these forms, rotating "
                   "(imperative,question,first_person,long_context; default: none, the splits as they are; rosi "
                   "harden fits on all four)")
    p.add_argument("--trailing-wrappers", action="store_true",
                   help="gated: with --wrapped-goals/--wrapped-benign, also fit (and select) under wrappers that put an "
                   "instruction about the answer's form after the goal (extraction.prompts.TRAILING_FIT_WRAPPER_TEMPLATES)")
    p.add_argument("--finalists", type=int, default=None,
                   help="gated: candidates scored on the whole validation split with full-length completions "
                   f"({defaults_text('finalists')})")
    p.add_argument("--wrapped-goals", type=int, default=None,
                   help="gated: also fit on this many further harmful goals under each fit-only wrapper (never the "
                   "test's jailbreak templates) and attack validation goals with them during selection; threshold: "
                   "also as many benign requests under the same wrappers (" + defaults_text("wrapped_goals") + ")")
    p.add_argument("--wrapped-benign", type=int, default=GatedConfig.wrapped_benign,
                   help="gated: benign requests fitted as benign under the same wrappers (so 'wrapped' is not learnt "
                   "as harm)")
    p.add_argument("--n-pairs", type=int, default=MeanConfig.n_pairs, help="mean-diff: prompts per set")
    p.add_argument("--n-harmful", type=int, default=None,
                   help="refusal-contrast(-reply): harmful prompts to answer and split; gated: harmful prompts to fit on "
                   f"({defaults_text('n_harmful')})")
    p.add_argument("--layer", type=int, default=None, help="fix the layer (default: select)")
    p.add_argument("--alpha", type=float, default=None, help="fix alpha (default: select)")
    p.add_argument("--layers", type=ints, default=None, help="candidate layers, comma list (gated: writers' layers)")
    p.add_argument("--alphas", type=floats, default=None,
                   help=f"candidate alphas, comma list (default: mean-diff/refusal-contrast: selected; gated "
                   f"{','.join(map(str, GatedConfig.alphas))}; threshold: its --preset's)")
    p.add_argument("--system-prompt", default=MeanConfig.system_prompt, help="safety | none | FILE (extraction only)")
    p.add_argument("--val-n", type=int, default=None, help=f"validation prompts per set (stage 2; {defaults_text('val_n')})")
    p.add_argument("--stage1-n", type=int, default=None, help=f"validation prompts per set (stage 1 grid; {defaults_text('stage1_n')})")
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"completion length for stage 2 ({defaults_text('max_new_tokens')})")
    p.add_argument("--stage1-tokens", type=int, default=None,
                   help=f"completion length for the stage 1 grid ({defaults_text('stage1_tokens')})")
    p.add_argument("--batch-size", type=int, default=None, help=defaults_text("batch_size"))
    p.add_argument("--report-dir", default=None)
    p.add_argument("--backend", default=MeanConfig.backend, choices=["vllm", "hf"],
                   help="generation for selection: hf (edit in place; default) or vllm (experimental, not covered by "
                   "CI: all candidates as LoRA adapters on one engine; on CPU, adapter requests ran at 0.5-0.7x of "
                   "baked throughput in benchmark P3, and each new adapter costs a load)")
    p.set_defaults(func=cmd_extract)
