"""Reconciliation and audit reports as text, JSON, CSV and one self-contained HTML file each.

Values are shown as they are: a number only when its column is a number (Decimal, int, float), never a
text that looks like one (``'0012.50'`` stays ``0012.50``); amounts localised in text and HTML, raw in
CSV and JSON. Times are UTC, or Europe/Oslo with ``--locale nb``.

In text and HTML a value is one line whatever it holds: control characters (newline, carriage
return, escape, ...), Unicode line separators and direction overrides are written as escapes
(``\\n``, ``\\x1b``, ``\\u2028``) and a backslash as ``\\\\``, so no value can start a line of its own
(a forged provenance block) or redraw the terminal. CSV and JSON carry values raw: their quoting
keeps a value in its field.

Every report ends with its provenance (cdc.provenance) and the SHA-256 of its body, which covers:
text and CSV, every line before the provenance block; HTML, the page between ``<!--body-->`` and
``<!--/body-->``; JSON, the document without its ``provenance`` key, written with sorted keys and no
whitespace (``json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
"""

from ._audit import audit_dict, audit_report
from ._reconcile import reconcile_dict, reconcile_report
from ._values import OSLO, moment, number, printable, raw, shown, zone

FORMATS = ("text", "json", "csv", "html")

__all__ = ["FORMATS", "OSLO", "audit_dict", "audit_report", "moment", "number", "printable", "raw", "reconcile_dict",
           "reconcile_report", "shown", "zone"]
