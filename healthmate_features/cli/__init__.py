"""The `healthmate-features` command line: parses, calls one library function, formats. No logic here.

One module per command group; `_common` holds the `main` group, the shared options and the
one table that maps library errors to click errors.
"""

from __future__ import annotations

import sys

from healthmate_features.cli import (  # noqa: F401  (register)
    audit,
    datasets,
    db,
    governance,
    jobs,
    keys,
    models,
    monitor,
    pipeline,
    serve,
    worker,
)
from healthmate_features.cli._common import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
