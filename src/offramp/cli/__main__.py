"""``python -m offramp.cli`` (used with torchrun / accelerate launch)."""

import sys

from .main import main

sys.exit(main())
