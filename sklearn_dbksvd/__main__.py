"""``python -m sklearn_dbksvd``: the ``dbksvd`` command line."""

import sys

from .cli import main

sys.exit(main())
