"""``python -m rosi_vllm.cli``: the same as the `rosi` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
