"""Settings shared by every component, read from ``PHOENIX_*`` environment variables.

Flags on the command line override these; the environment is the only place secrets
(the broker password inside ``PHOENIX_AMQP_URL``) come from, and :func:`redact_url`
is what every log line and ``--help`` text uses to show a URL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = PROJECT_ROOT / "models" / "phoenix.pt"
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def redact_url(url: str) -> str:
    """``amqp://user:secret@host`` → ``amqp://user:***@host``."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


def stage_config_values(cls: type, env_prefix: str, settings: object | None, attr_prefix: str) -> dict[str, object]:
    """Field values for a stage's frozen config dataclass: ``settings.<attr_prefix><field>`` if
    set, overridden by the environment variable ``<env_prefix><FIELD>``; typed by the field."""
    values: dict[str, object] = {}
    for f in fields(cls):
        raw = getattr(settings, f"{attr_prefix}{f.name}", None) if settings is not None else None
        raw = os.environ.get(f"{env_prefix}{f.name.upper()}", raw)
        if raw is None:
            continue
        if f.type in ("bool", bool):
            values[f.name] = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
        elif f.type in ("int", int):
            values[f.name] = int(raw)
        elif f.type in ("str", str):
            values[f.name] = str(raw)
        else:
            values[f.name] = float(raw)
    return values


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PHOENIX_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Topology and tuning. Names default to the ``phoenix.`` prefix (DESIGN.md)."""

    amqp_url: str = field(default="amqp://guest:guest@localhost:5672/%2F", repr=False)
    # Requests: a direct exchange routing to one RabbitMQ stream per partition.
    requests_exchange: str = "phoenix.requests"
    requests_stream_prefix: str = "phoenix.requests"
    partitions: int = 4
    # Where a partition starts reading when there is no recovery snapshot:
    # "first" (nothing published is skipped), "last", "next", or an integer offset.
    stream_start: str = "first"
    stream_max_bytes: int = 2_000_000_000
    # Verdict batches (Arrow) and EVE JSON alerts share one topic exchange.
    alerts_exchange: str = "phoenix.alerts"
    verdicts_stream: str = "phoenix.verdicts"
    deadletter_exchange: str = "phoenix.deadletter"
    deadletter_queue: str = "phoenix.deadletter"
    deadletter_max: int = 100_000
    # Batching in the dataflow: a batch closes at this many records or this age.
    batch_max_records: int = 8192
    batch_max_wait_ms: float = 5.0
    max_message_bytes: int = 4 * 1024 * 1024
    model_path: str = str(DEFAULT_MODEL)
    device: str = "auto"
    # Intra-op threads per dataflow process. One: scale with processes (-i/-a), and an idle
    # OpenMP thread spinning on a busy 2-core machine steals the broker's CPU.
    torch_threads: int = 1
    # "fp32", "bf16" (autocast), or "auto": bf16 where the CPU/GPU runs it natively.
    precision: str = "fp32"
    archive_dir: str = "archive"
    archive_roll_seconds: float = 60.0
    archive_roll_rows: int = 1_000_000
    worker_name: str = ""

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(f"PHOENIX_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """``PHOENIX_*`` variables that make a child process (a dataflow, a device) use these settings."""
        return {f"PHOENIX_{f.name.upper()}": str(getattr(self, f.name)) for f in fields(self)}

    def request_stream(self, partition: int) -> str:
        return f"{self.requests_stream_prefix}.{partition}"

    @property
    def safe_url(self) -> str:
        return redact_url(self.amqp_url)
