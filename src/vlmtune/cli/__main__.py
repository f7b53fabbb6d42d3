"""`python -m vlmtune.cli ...` (what torchrun and accelerate launch run): the same as the `vlmtune` command."""

import sys

from vlmtune.cli import main

sys.exit(main())
