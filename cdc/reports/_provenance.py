"""The provenance block every report ends with, and the SHA-256 of the body it covers."""

from __future__ import annotations

import html
import json
from typing import Any, Callable

from ..provenance import sha256
from ._values import moment, plain


def provenance_fields(provenance: Any, locale: str) -> list[tuple[str, str]]:
    p = provenance
    return [("tool", p.tool), ("run id", p.run_id), ("generated", moment(p.generated_at, locale)),
            ("host / user", f"{p.host} / {p.user}"), ("source", ", ".join(p.sources)),
            ("target", ", ".join(p.targets)), ("as of", json.dumps(plain(p.as_of), ensure_ascii=False)),
            ("filters", json.dumps(plain(p.filters), ensure_ascii=False) if p.filters else "none"),
            ("config sha256", f"{p.config_sha256} ({', '.join(f.rsplit('/', 1)[-1] for f in p.files)})")]


def with_provenance_lines(body: str, provenance: Any, locale: str, prefix: str) -> str:
    """``body``, then the provenance block, each line starting with ``prefix``, ending with the
    body's SHA-256."""
    if provenance is None:
        return body
    fields = provenance_fields(provenance, locale) + [("body sha256", f"{sha256(body)} (the lines above)")]
    return body + f"{prefix}provenance:\n" + "".join(f"{prefix}  {name:<14} {value}\n" for name, value in fields)


def json_with_provenance(data: dict, provenance: Any) -> str:
    data = plain(data)
    data.pop("provenance", None)
    if provenance is not None:
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        data["provenance"] = {**plain(provenance.as_dict()), "body_sha256": sha256(body)}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def html_provenance(provenance: Any, body: str, locale: str) -> str:
    if provenance is None:
        return ""
    nb = locale == "nb"
    fields = provenance_fields(provenance, locale) + [("body sha256", sha256(body))]
    names = {"tool": "Verktøy", "run id": "Kjøring", "generated": "Laget", "host / user": "Maskin / bruker",
             "source": "Kilde", "target": "Mål", "as of": "Per (sjekkpunkt)", "filters": "Filtre",
             "config sha256": "Konfigurasjon (SHA-256)", "body sha256": "Innhold (SHA-256)"}
    rows = "".join(f"<tr><th>{html.escape(names[n] if nb else n)}</th><td><code>{html.escape(v)}</code></td></tr>"
                   for n, v in fields)
    return (f'<h2>{"Opphav" if nb else "Provenance"}</h2><table class="provenance">{rows}</table>'
            f'<p class="meta">{"SHA-256 av siden mellom &lt;!--body--&gt; og &lt;!--/body--&gt;" if nb else "SHA-256 of the page between &lt;!--body--&gt; and &lt;!--/body--&gt;"}</p>')


def rendered(fmt: str, provenance: Any, locale: str, *, as_dict: Callable[[], dict], csv_body: Callable[[], str],
             html_page: Callable[[], str], text_body: Callable[[], str]) -> str:
    """A report in ``fmt`` with its provenance: JSON with a provenance object, CSV and text with
    provenance lines (CSV's as # comments), HTML as the page the report builds itself."""
    if fmt == "json":
        return json_with_provenance(as_dict(), provenance)
    if fmt == "csv":
        return with_provenance_lines(csv_body(), provenance, locale, "# ")
    if fmt == "html":
        return html_page()
    return with_provenance_lines(text_body(), provenance, locale, "")
