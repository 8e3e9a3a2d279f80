"""``python -m textmef`` (what ``torchrun ... -m textmef train`` runs)."""

import sys

from textmef.cli import main

sys.exit(main())
