"""``python -m gpugd``: the same command as ``gpugd`` (train, bench, info)."""

import sys

from .cli import main

sys.exit(main())
