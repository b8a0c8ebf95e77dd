"""One exception type for every way ROSI refuses to proceed.

The loader raises these inside vLLM's worker; vLLM then aborts start-up, so a
bad direction or config can never come up as an unhardened server. Messages are
single lines starting with ``rosi:`` so operators can grep them out of a
multi-process log.
"""


class RosiError(ValueError):
    """A configuration, direction file or checkpoint that ROSI must refuse."""

    def __init__(self, message: str):
        super().__init__(message if message.startswith("rosi:") else f"rosi: {message}")
