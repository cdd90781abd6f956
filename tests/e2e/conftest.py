"""The platform under test: the five services as real processes on the test's Kafka and MongoDB."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from services.identity.adapters.keys import generate_private_pem
from shared.kafka_security import kafka_client_environment
from shared.sealing import SealingKey
from tests.conftest import _local_infra_module
from tests.e2e.flows import Platform

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("identity", "devices", "meters", "tickets", "notify")


_local = _local_infra_module()  # deploy/local/infra.py: free ports, readiness probe


class Processes:
    """The services as child processes: started, killed and restarted by the tests."""

    def __init__(
        self,
        env: dict[str, str],
        ports: dict[str, int],
        logs: Path,
        service_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.env, self.ports, self.logs = env, ports, logs
        # Per service: its own Kafka principal (FLEETDESK_KAFKA_SASL_*), when security is on.
        self.service_env = dict(service_env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *names: str) -> None:
        for name in names:
            log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                cwd=ROOT,
                env={**self.env, **self.service_env.get(name, {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pending = set(names)
        deadline = time.monotonic() + 120
        while pending:
            for name in sorted(pending):
                if self.procs[name].poll() is not None:
                    tail = (self.logs / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited: {tail}")
                if _local.service_ready(self.ports[name]):
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"services not ready: {sorted(pending)}")
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        """A crash: SIGKILL, no shutdown hooks, nothing flushed or committed on the way out."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


@pytest.fixture(scope="session")
def platform(infra, mailpit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:  # type: ignore[no-untyped-def]
    logs = tmp_path_factory.mktemp("platform-logs")
    ports = {name: _local.free_port() for name in SERVICES}
    agent_password = secrets.token_urlsafe(16)
    signing_key = generate_private_pem()
    sealing_key = SealingKey.generate()  # notify's: identity seals tokens to its public half
    prefix = "e2e" + secrets.token_hex(4)
    env = {
        **os.environ,
        "FLEETDESK_ENVIRONMENT": "test",
        "FLEETDESK_KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "FLEETDESK_MONGO_URL": infra.mongo_url,
        "FLEETDESK_MONGO_DATABASE_PREFIX": prefix,
        "FLEETDESK_MONGO_OUTBOX_POLL_MS": "200",
        "FLEETDESK_METERS_DATA_DIR": str(logs),  # the faust worker's (empty) data directory
        "FLEETDESK_AUTH_KEY_CACHE_SECONDS": "1",
        "FLEETDESK_IDENTITY_SIGNING_KEY_PEM": signing_key,
        "FLEETDESK_IDENTITY_BOOTSTRAP_AGENT_EMAIL": "agent@service-centre.example.com",
        "FLEETDESK_IDENTITY_BOOTSTRAP_AGENT_PASSWORD": agent_password,
        # Every test client comes from 127.0.0.1: the per-client limit is tested on its own.
        "FLEETDESK_IDENTITY_SIGNIN_CLIENT_LIMIT": "10000",
        # Requests from 127.0.0.1 play the ingress: tests name the client in X-Forwarded-For.
        "FLEETDESK_IDENTITY_TRUSTED_PROXIES": "127.0.0.1/32,10.0.0.0/8",
        "FLEETDESK_IDENTITY_NOTIFY_SEALING_PUBLIC_KEY": sealing_key.public_key,
        "FLEETDESK_NOTIFY_SEALING_PRIVATE_KEY": sealing_key.private_key_b64(),
        # Offers to technicians lapse in seconds, so re-routing on no answer is seen in a test.
        "FLEETDESK_TICKETS_OFFER_SECONDS": "4",
        "FLEETDESK_NOTIFY_PORTAL_URL": f"http://127.0.0.1:{ports['identity']}",
        "FLEETDESK_NOTIFY_SMTP_HOST": mailpit.smtp_host,
        "FLEETDESK_NOTIFY_SMTP_PORT": str(mailpit.smtp_port),
        **{f"FLEETDESK_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    service_env = {
        name: kafka_client_environment(infra.kafka_principals[name])
        for name in SERVICES
        if name in infra.kafka_principals
    }
    processes = Processes(env, ports, logs, service_env)
    try:
        processes.start(*SERVICES)
        yield Platform(
            urls={name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
            kafka_bootstrap=infra.kafka_bootstrap,
            agent_email="agent@service-centre.example.com",
            agent_password=agent_password,
            logs=logs,
            mongo_url=infra.mongo_url,
            database_prefix=prefix,
            processes=processes,
            sealing_private_key=sealing_key.private_key_b64(),
        )
    finally:
        processes.stop_all()
