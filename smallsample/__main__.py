"""``python -m smallsample ...``: the ``smallsample`` command."""

import sys

from smallsample.cli import entry

sys.exit(entry())
