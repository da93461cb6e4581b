"""``python -m gitorch``."""

import sys

from gitorch.cli import main

sys.exit(main())
