"""`python -m purrgan` (and `torchrun -m purrgan`) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
