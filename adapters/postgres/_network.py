"""libpq settings that make a dead connection fail, and be retried, instead of hanging for hours."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

#: A server that does not answer a connect in 10 s is a passing fault; TCP keepalives find a peer that
#: went without a word (a cut network, a host gone) in about a minute (30 s idle + 3 probes 10 s apart),
#: where the kernel's defaults would wait two hours. A setting in the URL's query wins.
DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
            "keepalives_count": "3"}


def network_settings(url: str | sa.URL) -> dict[str, Any]:
    """DEFAULTS less what ``url`` sets itself."""
    query = sa.engine.make_url(url).query
    return {key: value for key, value in DEFAULTS.items() if key not in query}
