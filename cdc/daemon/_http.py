"""/healthz and Prometheus /metrics over HTTP, on loopback unless the config says otherwise."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Iterator

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..errors import ConfigError
from ._health import STATES, PairHealth

logger = logging.getLogger(__name__)


class _PairsCollector:
    """Prometheus metrics read from the pairs' health at each scrape (a reload adds or drops pairs)."""

    def __init__(self, pairs: Callable[[], Iterable[PairHealth]], daemon: Callable[[], dict], samples: dict):
        self._pairs, self._daemon, self._samples = pairs, daemon, samples

    def collect(self) -> Iterator[Metric]:
        pairs = list(self._pairs())
        applied = CounterMetricFamily("cdc_changes_applied", "Changes applied to the target, by source operation",
                                      labels=["pair", "op"])
        counters = {name: CounterMetricFamily(f"cdc_{name}", text, labels=["pair"]) for name, text in (
            ("batches", "Target transactions committed with a checkpoint"),
            ("conflicts", "Target rows met that someone else had changed, whatever the policy decided"),
            ("changes_parked", "Changes parked as dead letters or conflicts (held ones included)"),
            ("errors", "Faults met (retried) and pair failures"),
            ("restarts", "Times the daemon started the pair again after a failure"),
            ("snapshot_rows", "Rows copied by snapshots"))}
        lag = GaugeMetricFamily("cdc_replication_lag_seconds", "Seconds the target is behind the source",
                                labels=["pair"])
        checkpoint = GaugeMetricFamily("cdc_last_checkpoint_timestamp_seconds",
                                       "Unix time of the pair's last commit", labels=["pair"])
        up = GaugeMetricFamily("cdc_pair_up", "1 when the pair runs (or waits its turn) without error", labels=["pair"])
        state = GaugeMetricFamily("cdc_pair_state", "The pair's state (1 for the current one)", labels=["pair", "state"])
        for p in pairs:
            for op in ("insert", "update", "delete"):
                applied.add_metric([p.pair, op], p.applied.get(op, 0))
            for name, value in (("batches", p.batches), ("conflicts", p.conflicts), ("changes_parked", p.parked),
                                ("errors", p.errors), ("restarts", p.restarts), ("snapshot_rows", p.snapshot_rows)):
                counters[name].add_metric([p.pair], value)
            seconds = p.lag_seconds()
            if seconds is not None:
                lag.add_metric([p.pair], seconds)
            if p.checkpoint_at is not None:
                checkpoint.add_metric([p.pair], p.checkpoint_at.timestamp())
            up.add_metric([p.pair], 1 if p.healthy else 0)
            for name in STATES:
                state.add_metric([p.pair, name], 1 if p.state == name else 0)
        yield from (applied, *counters.values(), lag, checkpoint, up, state)
        yield from self._sampled([p.pair for p in pairs])
        info = self._daemon()
        yield GaugeMetricFamily("cdc_daemon_pairs_held", "Pairs this daemon runs now", value=info["held"])
        yield GaugeMetricFamily("cdc_state_database_up", "1 when the shared state database answers (no shared "
                                "state database: 1)", value=0 if info["state_database_error"] else 1)

    def _sampled(self, names: list[str]) -> Iterator[Metric]:
        """What the sampler last read (every 30 s; a pair whose databases it could not read has none)."""
        backlog = GaugeMetricFamily("cdc_source_backlog", "What the source holds after the checkpoint, in the unit "
                                    "its capture counts (changes, or bytes of WAL or binlog)", labels=["pair", "unit"])
        letters = GaugeMetricFamily("cdc_dead_letters_open", "Open dead letters (parked and held)", labels=["pair"])
        conflicts = GaugeMetricFamily("cdc_conflicts_open", "Open conflicts", labels=["pair"])
        for name in names:
            sample = self._samples.get(name)
            if sample is None:
                continue
            if sample.backlog is not None:
                backlog.add_metric([name, sample.unit], sample.backlog)
            if sample.dead_letters is not None:
                letters.add_metric([name], sample.dead_letters)
                conflicts.add_metric([name], sample.conflicts)
        yield from (backlog, letters, conflicts)


def health(pairs: Iterable[PairHealth], daemon: dict) -> tuple[int, bytes]:
    """The /healthz answer: 200 when every pair runs, idles or waits its turn without error, else 503."""
    rows = [p.summary() for p in pairs]
    ok = all(r["healthy"] for r in rows) and not daemon.get("stopping")
    return (200 if ok else 503), orjson.dumps({"healthy": ok, **daemon, "pairs": rows})


class Endpoints:
    """The HTTP server in a thread of its own."""

    def __init__(self, listen: tuple[str, int], pairs: Callable[[], Iterable[PairHealth]],
                 daemon: Callable[[], dict], samples: dict):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_PairsCollector(pairs, daemon, samples))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in ("/healthz", "/health"):
                    code, body = health(pairs(), daemon())
                    self._send(code, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /healthz or /metrics\n")

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
                logger.debug("http: " + format, *args)

        try:
            self.server = ThreadingHTTPServer(listen, Handler)
        except OSError as exc:
            raise ConfigError(f"daemon.listen {listen[0]}:{listen[1]}: cannot listen there ({exc.strerror}): "
                              "another daemon may use the port; set another, or `listen: off`") from None
        self.server.daemon_threads = True
        self.address = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, name="cdc-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
