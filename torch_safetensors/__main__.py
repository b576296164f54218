"""``python -m torch_safetensors`` and the ``torch-safetensors`` console script: the C++ command
line (cli/), run through the extension, so both behave exactly as the installed executable."""

from __future__ import annotations

import sys
from typing import List, Optional

from ._extension import _C


def main(argv: Optional[List[str]] = None) -> int:
    """Runs ``torch-safetensors`` with ``argv`` (default: the process's arguments); returns the
    exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    # The C++ code writes to the process's stdout and stderr directly: Python's buffers go first.
    sys.stdout.flush()
    sys.stderr.flush()
    return int(_C.cli_main(args))


if __name__ == "__main__":
    sys.exit(main())
