"""The one table every benchmark prints: each measure's seconds and rows/s beside its baseline."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable


def print_table(title: str, rows: int, measures: list[tuple[str, float, float | None]], peak_mib: float) -> None:
    """``measures``: (name, seconds, baseline seconds or None for a baseline row)."""
    width = max(len(name) for name, _, _ in measures) + 2
    print(title)
    print(f"{'measure':<{width}}{'seconds':>9}{'rows/s':>12}{'vs baseline':>13}")
    for name, seconds, base in measures:
        ratio = f"{base / seconds:>12.1%}" if base else f"{'':>12}"
        print(f"{name:<{width}}{seconds:>9.2f}{rows / seconds:>12,.0f} {ratio}")
    print(f"peak RSS of the process cdc ran in: {peak_mib:,.0f} MiB")


def timed_pair(source: str, target: str, capture: str, same: Callable[[], bool], update: Callable[[], None],
               options: str = "") -> tuple[float, float]:
    """Seconds of a pair's initial snapshot and of streaming ``update()``, each by `cdc run --once`
    in this process; ``same()`` must hold after each. ``options``: more pair keys, one per line."""
    from cdc import commands

    with tempfile.TemporaryDirectory() as tmp:
        config = str(Path(tmp) / "config.yaml")
        Path(config).write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  bench:\n"
                                f"    source: src\n    target: dst\n    capture: {capture}\n    tables: [ledger]\n"
                                "    batch_size: 20000\n    snapshot_chunk: 50000\n" + options)
        commands.init(config)
        commands.install(config)
        start = time.perf_counter()
        commands.run(config, once=True)
        snapshot = time.perf_counter() - start
        assert same(), "the snapshot differs from the source"
        update()
        start = time.perf_counter()
        commands.run(config, once=True)
        stream = time.perf_counter() - start
        assert same(), "the streamed update differs from the source"
        commands.uninstall(config)
    return snapshot, stream
