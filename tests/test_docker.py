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
    assert {"postgres", "mariadb", "setup", "daemon"} <= set(services)
    daemon = services["daemon"]
    assert daemon["command"][0] == "daemon" and daemon["depends_on"]["setup"]["condition"] == \
        "service_completed_successfully"
    assert all(port.startswith("127.0.0.1:") for port in daemon["ports"]), "metrics published on loopback only"
    assert "wal_level=logical" in services["postgres"]["command"]
    assert "--binlog-format=ROW" in services["mariadb"]["command"]
    for name in ("postgres", "mariadb"):
        assert "healthcheck" in services[name]
        assert "${LEDGER_PASSWORD:?" in str(services[name]["environment"]), "no password written in the file"
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
    env = {"LEDGER_URL": pg_url, "MARIADB_LEDGER_URL": mysql_url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for command in (("init",), ("install",), ("check",), ("run", "--once"), ("reconcile", "--pair", "erp_to_ledger"),
                    ("reconcile", "--pair", "erp_to_mariadb")):
        result = ws.cdc(*command, str(data / "config.yaml"))
        assert result.returncode == 0, (command, result.stdout + result.stderr)
    customers = execute(pg_url, "SELECT count(*) FROM kunder")[0][0]
    assert customers > 0 and mexec(mysql_url, "SELECT count(*) FROM kunder")[0][0] == customers
    assert os.environ["LEDGER_URL"] == pg_url
