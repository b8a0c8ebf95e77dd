"""`rosi demo`: the project's main job end to end (`run`), and the tiny random-model walk-through (`tiny`).

One module per job: `plan` (direction, tenants, prompts), `server` (the one
`vllm serve`, its process group and failure diagnosis), `client` (the
requests), `report` (table, rates, metrics, JSON and PNG), `run` (the steps).
"""

from .run import run_demo
from .tiny import run_tiny_demo

__all__ = ["run_demo", "run_tiny_demo"]
