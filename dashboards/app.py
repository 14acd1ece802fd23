"""``panel serve dashboards/app.py``: the live PhoenixFL dashboard.

Bokeh runs this file once per browser session; everything heavy (the broker consumer and the
aggregates) lives in imported modules, which Python keeps once per server process.
Settings come from ``PHOENIX_*`` (``PHOENIX_AMQP_URL``, ``PHOENIX_ALERTS_EXCHANGE``,
``PHOENIX_ARCHIVE_DIR``, ``PHOENIX_MODEL_PATH``) plus ``PHOENIX_DASHBOARD_REFRESH_MS``.
"""

import sys
from pathlib import Path

# `panel serve` puts this file's folder, not the project root, on sys.path; make the package
# importable when the project is run from a checkout rather than installed.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import holoviews as hv  # noqa: E402
import panel as pn  # noqa: E402

from dashboards.pages import Dashboard  # noqa: E402

pn.extension("tabulator", design="fast", notifications=False)
hv.extension("bokeh", logo=False)

Dashboard().view().servable(title="PhoenixFL")
