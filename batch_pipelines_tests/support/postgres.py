"""A throwaway PostgreSQL server for tests, and a fresh database on it per Dagster instance.

:func:`start_postgres` runs Debian's server binaries (``make setup`` installs the ``postgresql``
package) on 127.0.0.1 and a free port, with its data and socket in a temporary folder that
:meth:`PostgresServer.stop` removes. PostgreSQL refuses to run as root, so as root the server runs
as the ``postgres`` user the package creates, owning that folder; any other user runs it as itself.

:meth:`PostgresServer.fresh_database` copies a template that Dagster's storage migrations ran on
once: each instance starts empty and isolated without paying for the migrations again.

A session killed before its teardown (a timeout, ``kill -9``) leaves its server running: the next
:func:`start_postgres` stops and removes those whose session process is gone, never another live
session's.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg2

from batch_pipelines_tests.support.local_http import free_port
from batch_pipelines_tests.support.waiting import wait_until

__all__ = ["PostgresServer", "server_binaries", "start_postgres"]

_SUPERUSER = "postgres"
_PREFIX = "batch_pipelines_pg_"
_OWNER_FILE = "session.pid"
_TEMPLATE = "dagster_template"
# Durability buys a throwaway server nothing; without it a test's many small commits cost no fsync.
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200")


def server_binaries() -> Path:
    """The folder of ``initdb`` and ``postgres``: Debian keeps them out of PATH, one folder per major version."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError(
            "PostgreSQL's server binaries are not installed (no /usr/lib/postgresql/<version>/bin/initdb): "
            "`make setup` installs Debian's postgresql package"
        )
    return found[-1].parent


class PostgresServer:
    """A running server; ``url(database)`` is a ``postgresql://`` URL for one of its databases."""

    def __init__(self, process: subprocess.Popen, root: Path, port: int) -> None:
        self._process = process
        self._root = root
        self.port = port
        self._names = itertools.count(1)
        self._template_ready = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        conn = psycopg2.connect(self.url())
        try:
            conn.autocommit = True  # CREATE and DROP DATABASE cannot run inside a transaction
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def fresh_database(self, migrate: Any) -> str:
        """The URL of a new, empty database copied from the template; ``migrate(url)`` prepares the
        template the first time (it must leave no connection open: a template in use cannot be copied)."""
        if not self._template_ready:
            self.execute(f"CREATE DATABASE {_TEMPLATE}")
            migrate(self.url(_TEMPLATE))
            self._template_ready = True
        name = f"test_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop the database of ``url``, ending the sessions a test may have left on it."""
        self.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # "fast" shutdown: ends sessions, no checkpoint wait
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_orphans() -> None:
    """Stop and remove the servers of sessions that died without their teardown."""
    for root in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            owner = int((root / _OWNER_FILE).read_text())
            server = int((root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # being set up, or already stopped
        if _alive(owner):
            continue
        if _serves(server, root):
            os.kill(server, signal.SIGQUIT)  # immediate shutdown: nothing in it is worth keeping
            wait_until(lambda: not _serves(server, root), interval=0.05)
        shutil.rmtree(root, ignore_errors=True)


def _serves(pid: int, root: Path) -> bool:
    """Whether ``pid`` is still the server of ``root`` (not a later process given the same id)."""
    try:
        return str(root / "data") in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def start_postgres() -> PostgresServer:
    """A new server on 127.0.0.1, ready for connections, trusting local connections as ``postgres``."""
    binaries = server_binaries()
    _stop_orphans()
    as_user: dict[str, Any] = {}
    # Under /tmp rather than pytest's folders, which are private to the user running the tests.
    root = Path(tempfile.mkdtemp(prefix=_PREFIX))
    (root / _OWNER_FILE).write_text(str(os.getpid()))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(_SUPERUSER)  # created by Debian's package
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, sockets = root / "data", root / "sockets"
    run = {"env": {**os.environ, "LC_ALL": "C.UTF-8"}, "cwd": root, **as_user}
    subprocess.run(
        [binaries / "initdb", "-D", data, "-U", _SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-sync"],
        check=True, capture_output=True, **run,
    )  # fmt: skip
    sockets.mkdir()
    if as_user:
        os.chown(sockets, as_user["user"], as_user["group"])
    port = free_port()
    settings = [arg for setting in _FAST_SETTINGS for arg in ("-c", setting)]
    command = [binaries / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", sockets, *settings]
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **run)
    server = PostgresServer(process, root, port)

    def accepting() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with {process.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
        try:
            psycopg2.connect(server.url(), connect_timeout=5).close()
        except psycopg2.OperationalError:
            return False
        return True

    wait_until(accepting, interval=0.05)
    return server
