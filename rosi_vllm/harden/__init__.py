"""`rosi harden MODEL --out FILE`: the whole recipe (write direction, gated or threshold edit, verification) as one
command whose every setting is a rule over measurements of the model it runs on.

* `config`: `HardenConfig` (every default), the method rule, the dtype rule and the `--time-budget` scaling;
* `verdict`: the targets as rules relative to the unedited model, the checks and the one verdict line;
* `card`: the model card;
* `steps`: the one module that imports the extraction library (re-point its imports when that library moves);
* `run`: the stages, timed, with progress and a running estimate.
"""
