"""Run the `cdc` command line as `python -m cdc` does, in a process forked from a server that has
already loaded cdc-sync, its adapters and their drivers.

The suite runs the command line a few thousand times; each `python -m cdc` spent most of its time
loading modules (about 0.8 s of CPU here), which made the suite twice as slow as its work. Forking
keeps what a subprocess gives a test: its own process (pid, exit code, claims, crashes), its own
stdout and stderr, the working directory and environment of the call, and module state as a fresh
start has it (the server never runs a command). Kill tests still start `python -m cdc` themselves.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ["cdc.cli", "cdc.commands", "cdc.adapters.sqlite", "cdc.adapters.postgres", "cdc.adapters.mysql"]
_context = None


def _fork_context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked process: become `python -m cdc ARGS` run in ``cwd`` with ``env``."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
    sys.argv = [sys.executable, *args]
    code: int = 0
    try:
        from cdc.cli import main

        main.main(args=list(args), prog_name="python -m cdc")
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
            code = 1
        else:
            code = exc.code or 0
    except BaseException:  # as the interpreter would: the traceback on stderr, exit 1
        traceback.print_exc()
        code = 1
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """What ``subprocess.run([python, -m, cdc, *args], capture_output=True, text=True, cwd=cwd,
    timeout=timeout)`` returns, from a forked process."""
    with tempfile.TemporaryDirectory(prefix="cdc-cli-") as outputs:
        out, err = os.path.join(outputs, "stdout"), os.path.join(outputs, "stderr")
        process = _fork_context().Process(target=_child, args=(list(args), str(cwd), dict(os.environ), out, err))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired([sys.executable, "-m", "cdc", *args], timeout)
        stdout = Path(out).read_text(encoding="utf-8") if os.path.exists(out) else ""
        stderr = Path(err).read_text(encoding="utf-8") if os.path.exists(err) else ""
    # As subprocess.run: -N when killed by signal N.
    return subprocess.CompletedProcess([sys.executable, "-m", "cdc", *args], process.exitcode, stdout, stderr)
