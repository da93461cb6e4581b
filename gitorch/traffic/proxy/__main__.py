"""``python -m gitorch.traffic.proxy run ...``: the lean start of ``gitorch proxy run``."""

import sys

from gitorch.traffic.proxy.entry import main

sys.exit(main())
