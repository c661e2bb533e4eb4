"""What an ODBC URL reaches (the SQL dialect spoken, the ODBC connection string) and engines over pyodbc.

URL forms (see README "ODBC and SQL Server"):
- ``mssql+pyodbc://user:pw@host:port/db?driver=ODBC Driver 18 for SQL Server``: SQLAlchemy's own form;
- ``odbc://user:pw@host:port/db?driver=PostgreSQL Unicode``: another driver; the dialect is read off the
  driver's name, or given as ``dialect=postgresql|mysql|sqlite|mssql``;
- ``odbc://user:pw@/?dsn=ERP&dialect=postgresql``: a DSN from odbc.ini;
- ``odbc:///?odbc_connect=<url-encoded connection string>``: a whole connection string.
Any other query setting goes into the connection string as it is (``TrustServerCertificate=yes``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cdc.errors import ConfigError

from . import sql

#: The SQL dialects the adapter speaks, with the words by which a driver's name tells each.
DIALECTS = {"postgresql": ("postgres", "psql"), "mysql": ("mariadb", "mysql"), "sqlite": ("sqlite",),
            "mssql": ("sql server", "freetds", "tds", "mssql")}
NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite", "mssql": "SQL Server"}
#: Settings each dialect's connection string gets unless the URL sets them: psqlODBC gives booleans
#: as text and bytea as escaped text by default; MariaDB's driver must be told to speak utf8mb4 and
#: to count matched rows (the claim's fence checks that its UPDATE matched one).
DRIVER_DEFAULTS = {"postgresql": {"BoolsAsChar": "0", "ByteaAsLongVarBinary": "1",
                                  # parameters written into the statement by the driver: typed by the server as
                                  # literals are (a prepared json_build_object(?, ..) has no type to give ?)
                                  "UseServerSidePrepare": "0"},
                   # OPTION=2 (found rows): an UPDATE counts the rows it matched, not those it changed.
                   "mysql": {"CHARSET": "utf8mb4", "OPTION": "2"}, "sqlite": {"Timeout": "30000"}, "mssql": {}}
#: The driver a mssql+pyodbc:// URL without ?driver= gets: Microsoft's (msodbcsql18).
MSSQL_DRIVER = "ODBC Driver 18 for SQL Server"
#: Seconds a connection attempt waits for the server (ODBC's login timeout).
LOGIN_TIMEOUT = 10
_OWN_KEYS = {"driver", "dsn", "odbc_connect", "dialect"}


@dataclass(frozen=True)
class Reach:
    """Where an ODBC URL leads: the dialect, the connection string, and what identifies the database."""

    dialect: str
    connection_string: str
    server: tuple


def reach(connection_url: str) -> Reach:
    """The dialect and connection string of an ``odbc://`` or ``mssql+pyodbc://`` URL; ConfigError
    (naming what to write) when the URL does not say which database it is."""
    url = make_url(connection_url)
    query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    if query.get("driver", "").startswith("{") and query["driver"].endswith("}"):
        query["driver"] = query["driver"][1:-1]  # written as a connection string writes it: {PostgreSQL Unicode}
    if url.get_backend_name() == "mssql":
        dialect = "mssql"
    else:
        dialect, driver = (query.get("dialect") or "").lower() or _guess(query), _guess(query)
        if driver and dialect in DIALECTS and driver != dialect:  # its connection string would be the wrong one's
            raise ConfigError(f"ODBC URL {url.render_as_string(hide_password=True)}: the driver reaches {NAMES[driver]}, "
                              f"not {dialect} as the URL says: drop dialect= (the driver's name tells it) or name "
                              f"{NAMES[dialect]}'s driver")
        if dialect not in DIALECTS:
            missing = _not_installed(query.get("driver"))
            if missing:
                raise ConfigError(f"ODBC URL {url.render_as_string(hide_password=True)}: {missing}")
            raise ConfigError(f"ODBC URL {url.render_as_string(hide_password=True)}: cannot tell which database it "
                              f"reaches ({'dialect ' + repr(dialect) if dialect else 'no dialect given'}); add "
                              f"dialect=postgresql, mysql, sqlite or mssql to its query")
    if "odbc_connect" in query:
        given = dict(_pairs(query["odbc_connect"]))
        # The adapter's settings for the dialect, where the string does not set them (keys compare without case).
        named = {k.lower() for k in given}
        settings = {**given, **{k: v for k, v in DRIVER_DEFAULTS[dialect].items() if k.lower() not in named}}
        server = (dialect, *sorted((k.lower(), v) for k, v in given.items() if k.lower() not in ("uid", "pwd")))
    else:
        settings = {}
        if "dsn" in query:
            settings["DSN"] = query["dsn"]
            server = (dialect, "dsn", query["dsn"], url.database or "")
        else:
            if dialect == "mssql":
                query.setdefault("driver", MSSQL_DRIVER)
            if not query.get("driver"):
                raise ConfigError(f"ODBC URL {url.render_as_string(hide_password=True)}: name the ODBC driver "
                                  "(?driver=PostgreSQL Unicode; `odbcinst -q -d` lists the installed ones) or a DSN "
                                  "(?dsn=NAME)")
            settings["DRIVER"] = query["driver"]
            server = (dialect, (url.host or "").lower(), url.port, url.database or "")
            settings.update(_place(dialect, url))
        if url.username:
            settings["UID"] = url.username
        if url.password is not None:
            settings["PWD"] = url.password
        for name, value in {**DRIVER_DEFAULTS[dialect], **query}.items():
            if name not in _OWN_KEYS:
                settings[name] = value
    _refuse_mistakes(dialect, settings, url)
    text = ";".join(f"{name}={_braced(value)}" for name, value in settings.items())
    return Reach(dialect, text, server)


def _refuse_mistakes(dialect: str, settings: dict[str, str], url: sa.URL) -> None:
    """ConfigError for what would go wrong later and obscurely: psqlODBC's ANSI driver (it cannot read
    UTF-8 text back), and a SQLite file named relative to the working directory, not the config."""
    driver = settings.get("DRIVER", "")
    if dialect == "postgresql" and "ansi" in driver.lower():
        raise ConfigError(f"ODBC URL {url.render_as_string(hide_password=True)}: psqlODBC's ANSI driver ({driver}) "
                          "cannot carry UTF-8 text; use its Unicode driver: ?driver=PostgreSQL Unicode")
    database = next((v for k, v in settings.items() if k.lower() == "database"), "")
    if dialect == "sqlite" and database and not os.path.isabs(database):
        raise ConfigError(f"ODBC URL {url.render_as_string(hide_password=True)}: the SQLite file {database!r} "
                          "would be found from whatever folder cdc runs in: write its absolute path "
                          "(odbc:////srv/erp.db?driver=SQLite3), or use sqlite:///, which reads it from the config's folder")


def _not_installed(driver: str | None) -> str:
    """"ODBC driver 'X' is not installed on this machine (installed: ...)" when ``driver`` (a name, not
    a library path) is not among the installed ones, else ""."""
    if not driver or "/" in driver:
        return ""
    import pyodbc
    installed = pyodbc.drivers()
    if driver in installed:
        return ""
    return (f"ODBC driver {driver!r} is not installed on this machine (installed: "
            f"{', '.join(repr(d) for d in installed) or 'none'}; `odbcinst -q -d` lists them)")


def _guess(query: dict) -> str | None:
    """The dialect a driver's name (or a DSN's driver, as odbc.ini names it) tells, or None."""
    name = query.get("driver") or dict(_pairs(query.get("odbc_connect", ""))).get("DRIVER", "")
    if not name and "dsn" in query:
        import pyodbc
        name = pyodbc.dataSources().get(query["dsn"], "")
    name = name.lower()
    return next((dialect for dialect, words in DIALECTS.items() if any(w in name for w in words)), None)


def _place(dialect: str, url: sa.URL) -> dict[str, str]:
    """The server, port and database settings as the dialect's drivers name them."""
    if dialect == "sqlite":
        return {"Database": url.database or ""}
    found = {}
    if url.host:
        found["Server"] = f"{url.host},{url.port}" if dialect == "mssql" and url.port else url.host
    if url.port and dialect != "mssql":
        found["Port"] = str(url.port)
    if url.database:
        found["Database"] = url.database
    return found


def _braced(value: Any) -> str:
    """A connection-string value, in braces when it holds what would end or confuse it."""
    text = str(value)
    if re.search(r"[;{}=\s]", text) or text != text.strip():
        return "{" + text.replace("}", "}}") + "}"
    return text


def _pairs(text: str) -> list[tuple[str, str]]:
    """The KEY=value settings of a connection string (values in braces may hold ';')."""
    found = []
    for match in re.finditer(r"\s*([^=;]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)\s*(?:;|$)", text):
        value = match.group(2)
        if value.startswith("{"):
            value = value[1:-1].replace("}}", "}")
        found.append((match.group(1).upper() if match.group(1).upper() in ("DRIVER", "DSN") else match.group(1),
                      value))
    return found


def _said(pyodbc: Any, exc: Exception) -> Exception:
    """A failed connect as pyodbc's OperationalError (a passing fault SQLAlchemy and the core know) that
    prints as the driver's message ("[28000] ... password authentication failed"), not as the tuple of
    SQLSTATE and message pyodbc prints."""
    class DriverSaid(pyodbc.OperationalError):
        def __str__(self) -> str:
            return str(self.args[1]).strip() if len(self.args) > 1 else super().__str__()

    return DriverSaid(*exc.args)


def _open(pyodbc: Any, place: Reach) -> Any:
    """A pyodbc connection; ConfigError naming the fix when the driver or DSN is not installed (SQLSTATE
    IM002, or unixODBC's "Can't open lib"), where a connection that fails otherwise is a passing fault."""
    named = dict(_pairs(place.connection_string))
    database = next((v for k, v in named.items() if k.lower() == "database"), "")
    if place.dialect == "sqlite" and database and not os.path.exists(database):
        # The SQLite driver would create an empty file, and the error would be a missing table.
        raise ConfigError(f"SQLite database file {database} does not exist")
    try:
        connection = pyodbc.connect(place.connection_string, timeout=LOGIN_TIMEOUT)
    except pyodbc.Error as exc:
        state, text = (exc.args[0] if exc.args else ""), str(exc)
        if state == "IM002" or "Can't open lib" in text:
            if "DRIVER" in named:
                raise ConfigError(_not_installed(named["DRIVER"]) or f"ODBC driver {named['DRIVER']!r} cannot be "
                                  f"loaded: {text}") from None
            raise ConfigError(f"ODBC data source {named.get('DSN')!r} is not installed on this machine "
                              "(`odbcinst -q -s` lists the data sources)") from None
        raise _said(pyodbc, exc) from None
    sql.check_product(place.dialect, connection)
    return connection


#: pyodbc errors of a lost connection or server: SQLSTATEs (or their classes), and words of the drivers'
#: messages where the SQLSTATE is only HY000 (MariaDB's "Can't connect to server ... (2002)").
LOST_STATES = ("08", "57P01", "57P02", "57P03", "HYT00", "HYT01")
LOST_WORDS = ("can't connect", "lost connection", "gone away", "server closed the connection", "connection has been lost",
              "communication link failure", "could not connect", "connection refused", "terminating connection",
              "(2002)", "(2003)", "(2006)", "(2013)", "(2055)")
#: pyodbc errors of a lock wait or deadlock: try the transaction again.
BUSY_STATES = ("40001", "40P01", "55P03")
BUSY_WORDS = ("lock wait timeout", "deadlock", "database is locked", "lock request time out", "(1205)", "(1213)")


def fault(exc: BaseException | None) -> str | None:
    """'lost' (the connection or the server), 'busy' (a lock wait or deadlock) or None (no passing fault)."""
    args = getattr(exc, "args", ())
    state = args[0] if args and isinstance(args[0], str) else ""
    text = str(exc).lower()
    if state.startswith(LOST_STATES) or any(word in text for word in LOST_WORDS):
        return "lost"
    if state.startswith(BUSY_STATES) or any(word in text for word in BUSY_WORDS):
        return "busy"
    return None


#: A pyformat placeholder (``%(name)s``, ``%s``) or an escaped percent sign, in MySQL's and PostgreSQL's own SQL.
_PYFORMAT = re.compile(r"%\((\w+)\)s|%s|%%")


def _qmark(statement: str, parameters: Any) -> tuple[str, Any]:
    """The statement and parameters pyodbc is to be given. The MySQL and PostgreSQL adapters write their
    own SQL for PyMySQL and psycopg (``%(name)s`` with a dict, ``%s`` with a tuple, ``%%`` for a percent
    sign, all only when there are parameters; a list for an array); pyodbc takes ``?``, a sequence, and
    no list. SQLAlchemy's own statements, with ``?`` already, pass unchanged."""
    rows = parameters if isinstance(parameters, list) else [parameters]
    if not parameters or not (isinstance(rows[0], dict) or ("%s" in statement and "?" not in statement)):
        return statement, parameters
    names: list[str | None] = []

    def placeholder(match: re.Match) -> str:
        if match.group(0) == "%%":
            return "%"
        names.append(match.group(1))
        return "?"

    converted = _PYFORMAT.sub(placeholder, statement)
    if isinstance(rows[0], dict):
        rows = [tuple(row[name] for name in names) for row in rows]
    rows = [tuple(_array_text(v) if isinstance(v, list) else v for v in row) for row in rows]
    return converted, rows if isinstance(parameters, list) else rows[0]


def _array_text(values: list) -> str:
    """A list (psycopg binds it as a PostgreSQL array) as the array's text form, which PostgreSQL reads as
    the array its use wants ('{"a","b"}'); pyodbc binds no list."""
    items = ("NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(items) + "}"


def engine(place: Reach) -> sa.Engine:
    """An engine over pyodbc speaking the dialect's SQL; every connection runs with the dialect's
    session settings (UTC, strict, UTF-8), see sql.session."""
    import pyodbc

    from ._dialects import ENGINES  # registers the dialects SQLAlchemy does not ship

    # SQL Server: pyodbc sends an executemany's rows as arrays of parameters (fast_executemany).
    options = {"fast_executemany": True} if place.dialect == "mssql" else {}
    made = sa.create_engine(f"{ENGINES[place.dialect]}://", pool_pre_ping=True, pool_recycle=3600, **options,
                            creator=partial(_open, pyodbc, place))

    @sa.event.listens_for(made, "connect")
    def _connect(dbapi_connection, record):
        sql.session(place.dialect, dbapi_connection)
        if place.dialect == "mysql":  # MySQL's target keeps statements under it (see its statement_limit)
            from ..mysql.sql import MAX_PACKET
            record.info[MAX_PACKET] = int(dbapi_connection.execute("SELECT @@max_allowed_packet").fetchone()[0])

    if place.dialect in ("mysql", "postgresql"):
        @sa.event.listens_for(made, "before_cursor_execute", retval=True)
        def _placeholders(conn, cursor, statement, parameters, context, executemany):
            return _qmark(statement, parameters)

    @sa.event.listens_for(made, "handle_error")
    def _passing(context):
        """pyodbc raises most errors as its plain Error class, a lost server or a lock wait among them,
        where the native drivers raise OperationalError, which the core retries: give them that class
        (and a lost connection its invalidation, so the pool does not hand it out again)."""
        kind = fault(context.original_exception)
        if kind is None:
            return None
        if kind == "lost":
            context.is_disconnect = True
        if isinstance(context.sqlalchemy_exception, sa.exc.OperationalError):
            return None
        return sa.exc.OperationalError(context.statement, context.parameters, context.original_exception,
                                       connection_invalidated=kind == "lost")

    return made
