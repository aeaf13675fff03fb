"""``python -m smallsample.bench ...``: the suite with the process settings of
:mod:`smallsample.runtime` (no compile cache: cold compilation is measured unless
``--compile-cache DIR``), as ``smallsample bench`` runs it."""

import sys

from smallsample import runtime
from smallsample.bench.suite import main

runtime.configure(sys.argv[1:], compile_cache=False, restart=False)
sys.exit(main())
