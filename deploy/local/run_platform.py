"""``make run``: the whole platform on one machine, infrastructure included.

Starts Kafka and FerretDB from ``deploy/local/infra.py`` (unless
``FLEETDESK_KAFKA_BOOTSTRAP_SERVERS`` and ``FLEETDESK_MONGO_URL`` point at servers that already
run) and Mailpit (unless ``FLEETDESK_NOTIFY_SMTP_HOST`` names a mail server), creates the
topics, starts the five services as child processes, waits until each answers ``/ready``,
prints one line per service with its URL, and on Ctrl-C (or SIGTERM) stops everything it
started.

Kafka security: the local broker runs with SASL and ACLs; each service connects as its own
principal (passwords from ``FLEETDESK_KAFKA_<NAME>_PASSWORD``, development defaults otherwise).
With servers of your own, ``FLEETDESK_KAFKA_*`` are the super user's: with SASL the principals'
credentials, topics and ACLs are set up with them and each service gets its own principal; with
``PLAINTEXT`` (security off) the topics are created and every service uses those settings.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"identity": 8001, "devices": 8002, "meters": 8003, "tickets": 8004, "notify": 8005}


def _infra_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fleetdesk_local_infra", Path(__file__).with_name("infra.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _kafka_principals(infra: Any, env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each service's ``FLEETDESK_KAFKA_*`` (its own principal); topics and ACLs in place."""
    from pydantic import SecretStr

    from shared.bus import ensure_topics
    from shared.config import Environment, KafkaSettings, SaslMechanism
    from shared.kafka_security import (
        ADMIN,
        kafka_client_environment,
        principal_passwords,
        setup_cluster,
    )

    if infra is not None:  # the local broker: set up by LocalInfra.start()
        return {n: kafka_client_environment(infra.kafka_settings_of(n)) for n in SERVICES}
    admin = KafkaSettings(bootstrap_servers=env["FLEETDESK_KAFKA_BOOTSTRAP_SERVERS"])
    if not admin.uses_sasl:  # security off: topics only, every service the same settings
        asyncio.run(ensure_topics(admin))
        return {}
    environment = Environment(env.get("FLEETDESK_ENVIRONMENT", "development"))
    passwords: dict[str, SecretStr] = principal_passwords(environment, env)
    passwords.pop(ADMIN)
    asyncio.run(setup_cluster(admin, passwords))
    return {
        name: kafka_client_environment(
            admin.as_principal(name, passwords[name]).model_copy(
                update={"sasl_mechanism": SaslMechanism.SCRAM_SHA_512}
            )
        )
        for name in SERVICES
    }


def main() -> int:
    started = time.monotonic()
    sys.path.insert(0, str(ROOT))
    infra = None
    env = dict(os.environ)
    module = _infra_module()
    if not (env.get("FLEETDESK_KAFKA_BOOTSTRAP_SERVERS") and env.get("FLEETDESK_MONGO_URL")):
        infra = module.LocalInfra(module.CACHE / "platform")
        print("starting Kafka, PostgreSQL and FerretDB ...", flush=True)
        infra.start()
        env["FLEETDESK_KAFKA_BOOTSTRAP_SERVERS"] = infra.kafka_bootstrap
        env["FLEETDESK_MONGO_URL"] = infra.mongo_url
        # faust's data beside the Kafka data, so that both are wiped together.
        env.setdefault("FLEETDESK_METERS_DATA_DIR", str(module.CACHE / "platform" / "meters"))
    mailpit = None
    if not env.get("FLEETDESK_NOTIFY_SMTP_HOST"):
        mailpit = module.LocalMailpit(module.CACHE / "platform")
        mailpit.start()
        env["FLEETDESK_NOTIFY_SMTP_HOST"] = "127.0.0.1"
        env["FLEETDESK_NOTIFY_SMTP_PORT"] = str(mailpit.smtp_port)
        print(f"mailpit   ready  {mailpit.api_url}/  (the inbox: every e-mail notify sends)")
    service_env = _kafka_principals(infra, env)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, port in SERVICES.items():
            env[f"FLEETDESK_{name.upper()}_PORT"] = env.get(
                f"FLEETDESK_{name.upper()}_PORT", str(port)
            )
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                cwd=ROOT,
                env={**env, **service_env.get(name, {})},
                start_new_session=True,
            )
        pending = dict(SERVICES)
        deadline = time.monotonic() + 120
        while pending and not stopping:
            for name, port in list(pending.items()):
                if procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited with {procs[name].returncode}")
                if module.service_ready(port):
                    print(f"{name:9} ready  http://127.0.0.1:{port}/{name}/docs", flush=True)
                    del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready: {sorted(pending)}")
            time.sleep(0.2)
        if not stopping:
            print(
                f"all services ready in {time.monotonic() - started:.1f}s; Ctrl-C stops everything",
                flush=True,
            )
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", flush=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if mailpit is not None:
            mailpit.stop()
        if infra is not None:
            infra.stop()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
