"""Servers a test starts on localhost and stops after it: Redis, PostgreSQL, and the processes that use them.

Each is a context manager that yields once the server answers, and stops it (and everything it started) on the
way out, also when the test fails. Their logs go to files in the given folder, so a failure can say why.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 60.0, log: Path | None = None) -> None:
    """Poll `ready` until it is true; after `timeout` seconds fail, quoting the end of `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} was not ready after {timeout:.0f}s\n{tail}")


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def process_group(command: Sequence[str], log: Path, **popen) -> Iterator[subprocess.Popen]:
    """`command` in a session of its own, stdout and stderr into `log`; on exit SIGTERM to its whole group
    (a launcher's children too), then SIGKILL to what is left after 20 s."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        yield process
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A Redis on 127.0.0.1 that keeps nothing on disk; yields its URL, redis://127.0.0.1:<port>."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(folder)]
    log = folder / "redis.log"
    with process_group(command, log):
        wait_until(lambda: accepts_connections(port), "redis-server", log=log)
        yield f"redis://127.0.0.1:{port}"


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (initdb, pg_ctl), or None when not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


POSTGRES_SCHEME = "postgresql+psycopg2"
"""The driver dagster-postgres speaks; SQLAlchemy 2.1 picks psycopg 3 for a bare `postgresql://`."""


@dataclass(frozen=True)
class Postgres:
    hostname: str
    port: int
    username: str
    db_name: str

    def dagster_storage(self) -> dict:
        """The `storage` block of a dagster.yaml that keeps runs, events and schedules in this database."""
        db = {"hostname": self.hostname, "port": self.port, "username": self.username, "db_name": self.db_name,
              "password": "trust",  # trust authentication on localhost: any password is accepted
              "scheme": POSTGRES_SCHEME}
        return {"postgres": {"postgres_db": db}}


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on 127.0.0.1 with a database `dagster`; removed on exit.

    PostgreSQL refuses to run as root, so under root its files belong to, and it runs as, Debian's `postgres`
    user; its folder is made under the system's temporary folder, which that user can reach."""
    binaries = postgres_bin()
    as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="peerlens-postgres-"))
    if as_server:
        shutil.chown(folder, "postgres", "postgres")
    data, log, port = folder / "data", folder / "postgres.log", free_port()
    user = "dagster"
    try:
        subprocess.run([*as_server, binaries / "initdb", "-D", data, "-U", user, "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*as_server, binaries / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start"],
                       check=True, capture_output=True)
        try:
            subprocess.run([binaries / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, "dagster"],
                           check=True, capture_output=True)
            yield Postgres("127.0.0.1", port, user, "dagster")
        finally:
            subprocess.run([*as_server, binaries / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def s3_server(folder: Path) -> Iterator[dict]:
    """moto's S3 in server mode on 127.0.0.1 (as s3fs's own tests run it), with a bucket `peerlens`; yields the
    environment a process needs to reach it through fsspec/s3fs (FSSPEC_S3_* and fake AWS credentials)."""
    port = free_port()
    log = folder / "moto.log"
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with process_group(command, log):
        wait_until(lambda: accepts_connections(port), "moto_server", log=log)
        environment = {
            "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "FSSPEC_S3_KEY": "testing",
            "FSSPEC_S3_SECRET": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        import s3fs

        s3fs.S3FileSystem(endpoint_url=environment["FSSPEC_S3_ENDPOINT_URL"], key="testing", secret="testing",
                          skip_instance_cache=True).mkdir("peerlens")
        yield environment


def s3_fsspec_config(environment: dict) -> dict:
    """fsspec's configuration for the `s3` protocol from `s3_server`'s environment (what fsspec reads from
    FSSPEC_S3_* when it is imported, for a process that imported it already)."""
    prefix = "FSSPEC_S3_"
    return {name[len(prefix):].lower(): value for name, value in environment.items() if name.startswith(prefix)}
