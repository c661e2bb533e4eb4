"""A throw-away MariaDB server on a free loopback port, with its own data directory and binlog.

Started from Debian's `mariadb-server` binaries (`mariadb-install-db` + `mariadbd`); the binlog
is on in ROW format with full row images and full row metadata, as binlog capture needs.
CDC_TEST_MYSQL_URL points the tests at an existing server instead. As root (CI) the server
runs with --user=root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pymysql


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
                                            if p.exists()), None)
        if found:
            return found
    return None


class LocalMariaDB:
    """mariadb-install-db + mariadbd; remove() kills it and deletes its files."""

    def __init__(self, settings: dict[str, str] | None = None):
        self.server = _binary("mariadbd", "mysqld")
        install = _binary("mariadb-install-db", "mysql_install_db")
        if self.server is None or install is None:
            raise RuntimeError("MariaDB server binaries (mariadbd, mariadb-install-db) not found; "
                               "install mariadb-server")
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cdc-mariadb-"))
        self.data = self.dir / "data"
        self.socket = self.dir / "mysql.sock"
        (self.dir / "tmp").mkdir()
        self.user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        self.settings = {
            # Its own temporary directory: a MariaDB that starts removes the #sql* files it finds in its
            # tmpdir, which would be another server's open temporary tables when several share /tmp
            # (one server per pytest-xdist worker).
            "tmpdir": str(self.dir / "tmp"),
            "log-bin": str(self.dir / "binlog"), "binlog-format": "ROW", "binlog-row-image": "FULL",
            "binlog-row-metadata": "FULL", "server-id": "1", "innodb-flush-log-at-trx-commit": "1",
            "innodb-buffer-pool-size": "256M", "innodb-log-file-size": "256M", "sync-binlog": "0",
            "character-set-server": "utf8mb4", "collation-server": "utf8mb4_unicode_ci", "max-connections": "200",
            **(settings or {})}
        for attempt in range(3):  # seen to fail now and then while another worker sets up its own server
            result = subprocess.run([install, "--no-defaults", f"--datadir={self.data}", f"--user={self.user}",
                                     "--auth-root-authentication-method=normal", "--skip-test-db"],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                break
            shutil.rmtree(self.data, ignore_errors=True)
            time.sleep(1 + attempt)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stderr or result.stdout}")
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        args = [self.server, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--user={self.user}",
                f"--pid-file={self.dir / 'mariadb.pid'}", f"--log-error={self.dir / 'error.log'}",
                *[f"--{k}={v}" for k, v in self.settings.items()]]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2).close()
                return
            except pymysql.err.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "error.log").read_text(errors="replace")[-2000:] \
                        if (self.dir / "error.log").exists() else ""
                    raise RuntimeError(f"mariadbd did not start: {log}") from None
                time.sleep(0.2)

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (clean shutdown) or SIGKILL (a crash)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(timeout=60)
        self.process = None

    def url(self, database: str = "") -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        try:
            self.stop(kill=True)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
