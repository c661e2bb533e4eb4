"""Daemons sharing pairs through a state database: who is alive, and which daemon is to run which pair.

Each daemon keeps a row in ``cdc_daemons`` of the shared database, with a heartbeat by that database's
clock every quarter of the lease time; a daemon whose heartbeat is older than three quarters of it is
gone, so that its pairs start elsewhere within the lease time. Each pair is assigned to one
live daemon by rendezvous hashing (the highest hash of daemon and pair name), so the pairs spread
over the daemons and only a gone or new daemon's share moves.

The assignment only says who should *try*: what makes a pair run in exactly one place is its claim
in the target (cdc/state/_claims.py), whose fencing token every checkpoint write checks in the same
transaction. Two daemons that disagree for a moment (one cannot reach the state database) both try,
and one waits in standby until the other's claim ends; nothing is applied twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import uuid

import sqlalchemy as sa

from .._connections import load_url, mask_url
from ..errors import ConfigError
from ..state._store import aware, db_now

_metadata = sa.MetaData()
daemons = sa.Table(
    "cdc_daemons", _metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("pairs", sa.Text),  # the pairs it runs now, for `cdc daemons`
)


def owner(pair: str, members: list[str]) -> str | None:
    """The daemon among ``members`` that is to run ``pair`` (rendezvous hashing), None without members."""
    if not members:
        return None
    return max(members, key=lambda member: hashlib.sha256(f"{member}\0{pair}".encode()).digest())


class Membership:
    """This daemon's row in the shared state database, and the live daemons it sees there."""

    def __init__(self, url: str, lease_seconds: float):
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.beat_every = lease_seconds / 4
        self.expiry = self.lease * 3 / 4
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        try:
            self.engine = sa.create_engine(load_url(url), pool_pre_ping=True)
        except ImportError as exc:  # a driver that is not installed (postgresql+asyncpg://)
            raise ConfigError(f"daemon.state {mask_url(url)}: its driver is not installed ({exc}); write "
                              "postgresql://... for psycopg") from None
        self.members: list[str] = [self.id]
        #: False while the state database cannot be read: then every daemon tries every pair, and the
        #: pairs' claims decide (a daemon that died meanwhile must not leave its pairs unrun).
        self.reachable = True
        self._joined = False

    def beat(self, pairs: list[str]) -> list[str]:
        """Refresh this daemon's heartbeat and return the live daemons (this one included).

        Raises SQLAlchemy's errors when the database is away: the caller keeps the last view.
        """
        if not self._joined:
            try:
                with self.engine.begin() as conn:
                    _metadata.create_all(conn, checkfirst=True)
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                pass  # another daemon created it at the same moment (PostgreSQL's catalog race)
        with self.engine.begin() as conn:
            moment = db_now(conn)
            values = {"heartbeat_at": moment, "pairs": ",".join(sorted(pairs))}
            done = conn.execute(daemons.update().where(daemons.c.id == self.id).values(**values))
            if done.rowcount == 0:
                conn.execute(daemons.insert().values(id=self.id, host=socket.gethostname(), pid=os.getpid(),
                                                     started_at=moment, **values))
            # Rows of daemons long gone are cleared; a recently gone one stays visible a while.
            conn.execute(daemons.delete().where(daemons.c.heartbeat_at < moment - 20 * self.lease))
            live = conn.execute(sa.select(daemons.c.id).where(daemons.c.heartbeat_at >= moment - self.expiry)).scalars()
            self.members = sorted(set(live) | {self.id})
        self._joined = True
        return self.members

    def leave(self) -> None:
        """Take this daemon's row out at a clean stop, so its pairs move at once."""
        try:
            with self.engine.begin() as conn:
                conn.execute(daemons.delete().where(daemons.c.id == self.id))
        except sa.exc.SQLAlchemyError:
            pass  # the row expires by itself
        self.engine.dispose()

    def assigned(self, pair: str) -> str | None:
        """None when this daemon is to run ``pair`` (or may try: the state database is away), else which
        daemon is."""
        if not self.reachable:
            return None
        chosen = owner(pair, self.members)
        return None if chosen in (None, self.id) else f"assigned to daemon {chosen}"


def list_daemons(url: str) -> list[dict]:
    """The rows of ``cdc_daemons`` (for `cdc status --state`), newest heartbeat first."""
    engine = sa.create_engine(load_url(url))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("cdc_daemons"):
                return []
            moment = db_now(conn)
            rows = conn.execute(sa.select(daemons).order_by(daemons.c.heartbeat_at.desc())).all()
    finally:
        engine.dispose()
    return [{**row._mapping, "seconds_since_heartbeat": round((moment - aware(row.heartbeat_at)).total_seconds(), 1)}
            for row in rows]
