"""The service files in docker/: what can be checked without a Docker engine or systemd, checked.

The compose file and the unit parse and say what the README says; the compose demo's config runs for
real against the test's PostgreSQL and MariaDB, as the compose file's `setup` service runs it."""

from __future__ import annotations

import configparser
import os
import shutil
from pathlib import Path

import yaml

from test_mysql_source import mexec
from test_postgres_source import execute

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def test_the_compose_file_brings_up_postgresql_mariadb_and_the_daemon():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "mariadb", "mssql", "mssql-init", "setup", "daemon"} <= set(services)
    daemon = services["daemon"]
    assert daemon["command"][0] == "daemon" and daemon["depends_on"]["setup"]["condition"] == \
        "service_completed_successfully"
    assert all(port.startswith("127.0.0.1:") for port in daemon["ports"]), "metrics published on loopback only"
    assert "wal_level=logical" in services["postgres"]["command"]
    assert "--binlog-format=ROW" in services["mariadb"]["command"]
    for name in ("postgres", "mariadb", "mssql"):
        assert "healthcheck" in services[name]
        assert "_PASSWORD:?" in str(services[name]["environment"]), "no password written in the file"
    assert services["setup"]["depends_on"]["mssql-init"]["condition"] == "service_completed_successfully"
    assert "./mssql-init.sql:/init/mssql-init.sql:ro" in services["mssql-init"]["volumes"]
    init = (DOCKER / "mssql-init.sql").read_text()
    assert "SET CHANGE_TRACKING = ON" in init and "CREATE TABLE Postering" in init
    build = services["setup"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()


def test_the_dockerfile_runs_the_daemon_as_a_non_root_user_with_a_health_check():
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert 'ENTRYPOINT ["cdc"]' in lines and any(line.startswith('CMD ["daemon"') for line in lines)
    ignored = (DOCKER.parent / ".dockerignore").read_text().split()
    assert {".venv", "*.db", ".git"} <= set(ignored)


def test_the_systemd_unit_is_type_notify_with_watchdog_reload_and_hardening():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(DOCKER / "cdc-sync.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["ExecStart"].split()[1:3] == ["daemon", "/etc/cdc-sync/config.yaml"]
    assert "-HUP" in service["ExecReload"]
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["User"] != "root"


def test_the_compose_demo_config_runs_against_real_servers(ws, pg_url, mysql_url, monkeypatch):
    """What the compose file's setup and daemon services run: the demo into PostgreSQL, the compose config
    (a second pair into MariaDB) initialised, installed and run; both ledgers equal the ERP."""
    data = ws.root / "data"
    result = ws.cdc("demo", "--dir", str(data), "--target", pg_url)
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.copy(DOCKER / "compose-config.yaml", data / "config.yaml")
    shutil.copy(DOCKER.parent / "mappings" / "visma_to_ledger.yaml", data)
    env = {"LEDGER_URL": pg_url, "MARIADB_LEDGER_URL": mysql_url, "MSSQL_SA_PASSWORD": "Chang3-me!"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The SQL Server pair needs a SQL Server (none here: see test_the_sql_server_pairs_mapping_runs...).
    for pair in ("erp_to_ledger", "erp_to_mariadb"):
        for command in (("init",), ("install",), ("check",), ("run", "--once"), ("reconcile",)):
            result = ws.cdc(*command, "--pair", pair, str(data / "config.yaml"))
            assert result.returncode == 0, (command, result.stdout + result.stderr)
    customers = execute(pg_url, "SELECT count(*) FROM kunder")[0][0]
    assert customers > 0 and mexec(mysql_url, "SELECT count(*) FROM kunder")[0][0] == customers
    assert os.environ["LEDGER_URL"] == pg_url


def test_the_sql_server_pairs_mapping_runs_on_a_stand_in_with_the_same_tables(ws):
    """No SQL Server here: docker/mssql-init.sql's tables and rows, in SQLite, go through the compose
    config's visma_to_ledger mapping into a ledger, so a column the mapping names that the tables lack,
    or a transform that does not fit, fails here rather than in the compose demo."""
    import re
    import sqlite3
    source = ws.root / "visma.db"
    script = (DOCKER / "mssql-init.sql").read_text()
    statements = [s for s in re.split(r"\n(?:GO|END)\n|\nBEGIN\n", script) if "CREATE TABLE" in s or "INSERT" in s]
    with sqlite3.connect(source) as conn:
        for statement in statements:
            for part in re.findall(r"(CREATE TABLE .*?\);|INSERT INTO .*?\);)", statement.replace("\n", " "), re.S):
                conn.execute(re.sub(r"N'", "'", part.replace("NVARCHAR", "TEXT")))
    shutil.copy(DOCKER.parent / "mappings" / "visma_to_ledger.yaml", ws.root)
    ws.config.write_text(f"connections:\n  visma: sqlite:///{source}\n  ledger: sqlite:///{ws.root / 'ledger.db'}\n"
                         "pairs:\n  p:\n    source: visma\n    target: ledger\n    mapping: visma_to_ledger.yaml\n",
                         encoding="utf-8")
    for command in (("init",), ("install",), ("run", "--once"), ("reconcile",)):
        result = ws.cdc(*command, str(ws.config))
        assert result.returncode == 0, (command, result.stdout + result.stderr)
    with sqlite3.connect(ws.root / "ledger.db") as conn:
        assert conn.execute("SELECT count(*), sum(CAST(belop AS REAL)) FROM visma_posteringer").fetchone() == (6, 0)
        assert conn.execute("SELECT poststed FROM visma_kunder ORDER BY kundenr").fetchall() == [("RØROS",), ("TROMSØ",)]
