"""Process defaults that must be in place before torch loads its OpenMP runtime (imported first).

OMP_WAIT_POLICY=PASSIVE: OpenMP threads that finish their share of an operation sleep instead of
spinning. The operations here are milliseconds long, so waking costs nothing measurable, while on a
machine shared with other work spinning threads take the cores from the threads doing the work: on
2 busy cores a training step ran 1.5 to 2.7 times faster passive than spinning (benchmarks/README.md).
Only a default: a value set by the user wins, and it has no effect when torch was imported earlier.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
