"""``python -m semckd ...`` — same as the ``semckd`` console script."""

import sys

from .cli import main

sys.exit(main())
