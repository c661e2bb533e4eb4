"""The one table every benchmark prints: each measure's seconds and rows/s beside its baseline."""

from __future__ import annotations


def print_table(title: str, rows: int, measures: list[tuple[str, float, float | None]], peak_mib: float) -> None:
    """``measures``: (name, seconds, baseline seconds or None for a baseline row)."""
    width = max(len(name) for name, _, _ in measures) + 2
    print(title)
    print(f"{'measure':<{width}}{'seconds':>9}{'rows/s':>12}{'vs baseline':>13}")
    for name, seconds, base in measures:
        ratio = f"{base / seconds:>12.1%}" if base else f"{'':>12}"
        print(f"{name:<{width}}{seconds:>9.2f}{rows / seconds:>12,.0f} {ratio}")
    print(f"peak RSS of the process cdc ran in: {peak_mib:,.0f} MiB")
