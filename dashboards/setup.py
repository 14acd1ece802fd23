"""``panel serve --setup dashboards/setup.py``: start the shared consumer with the server.

Without it the consumer starts with the first browser session, so totals count from then on.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dashboards.consumer import shared  # noqa: E402

shared()
