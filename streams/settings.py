"""Runtime settings: environment variables ``SEGFLOW_*``, optionally a YAML file.

Precedence: environment > YAML file named by ``SEGFLOW_CONFIG`` (or passed
to :func:`load_settings`) > defaults. Every field is listed, with its
environment variable, by ``segflow config``.

>>> s = Settings(kafka_url="kafka://k:9092", lateness_seconds=60)
>>> s.lateness_ms, s.topics.segment_changes
(60000, 'segment-changes')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.keys import Layout
from streams.topics import Topics


class SettingsError(ValueError):
    """A bad settings file or variable; the message names where and what."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEGFLOW_", extra="forbid")

    kafka_url: str = Field("kafka://127.0.0.1:9092", description="Faust broker URL(s), e.g. kafka://host1:9092;kafka://host2:9092")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_ca_file: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL")
    redis_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="redis:// or rediss:// (TLS); may carry a password")
    redis_cluster: bool = Field(False, description="true: SEGFLOW_REDIS_URL is a seed node of a Redis Cluster, and every client is a cluster client")
    app_id: str = Field("segflow", description="Faust app id = Kafka consumer group")
    topic_prefix: str = ""
    partitions: int = Field(
        4,
        ge=1,
        le=1024,
        description="Partitions per input topic (segflow creates them so); Redis keys are laid out by partition, so changing it needs `segflow migrate-layout`",
    )
    lateness_seconds: float = Field(6 * 3600, ge=0, description="Allowed event-time lateness; older events are dead-lettered as too_late")
    idle_partition_seconds: float = Field(30.0, gt=0, description="An input partition silent this long stops holding back the event-time watermark")
    max_future_skew_seconds: float = Field(3600, ge=0, description="Events further in the future than this are rejected")
    clock: Literal["wall", "event"] = Field(
        "wall", description="wall: deadlines fire on wall-clock time; event: on the event-time watermark (replays, simulations)"
    )
    segments_config: Path | None = Field(None, description="YAML segmentation config; default: the one shipped in segmenter/")
    campaigns_file: Path | None = Field(
        None, description="YAML campaign routing config; default: the one shipped in segmenter/ (an empty list turns routing off)"
    )
    batch_size: int = Field(2000, ge=1, description="Events taken from the stream per Redis pipeline")
    batch_within: float = Field(0.01, gt=0, description="Seconds to wait for a batch to fill (a floor on quiet-time latency; under load batches fill first)")
    batch_backlog_within: float = Field(
        0.1,
        ge=0,
        description="Under a backlog (enough unread events on the batch's partitions to fill it), how much longer a batch may wait to fill; larger batches cost less per event. 0: never",
    )
    fetch_max_wait_ms: int = Field(
        20, ge=1, le=1500, description="Longest a Kafka fetch waits for data (Faust hard-codes 1500 ms; it bounds quiet-time latency)"
    )
    max_customers: int = Field(
        10_000_000,
        ge=0,
        description=(
            "Customers with state in Redis at most (about 2 KB each), held per input partition (this / partitions, rounded up); "
            "events of further new customers are dead-lettered as customer_limit. 0: no limit"
        ),
    )
    erasure_suppress_days: float = Field(
        30.0,
        ge=0,
        description=(
            "How long an erased customer's events are dropped as suppressed (the tombstone's life); "
            "at least the input topics' retention, so no replay brings the customer back. 0: for ever"
        ),
    )
    retention_days: float = Field(
        0.0,
        ge=0,
        description=(
            "Forget a customer after this many days without an event (on the worker's clock), through the deadline timer: "
            "state removed and a final change per segmentation (reason retention), as segflow forget but without suppressing "
            "a later return. 0: keep customers for ever"
        ),
    )
    history_cap: int = Field(10, ge=1, description="Segment changes kept per customer in Redis, compact (about 90 B each; the full changes are on the topic)")
    snapshot_interval_seconds: float = Field(30.0, gt=0, description="How often the behaviour model is snapshotted to Redis")
    deadline_interval_seconds: float = Field(0.25, gt=0, description="How often due deadlines are claimed and re-evaluated (bounds deadline-to-change latency)")
    deadline_claim: int = Field(
        200,
        ge=1,
        description=(
            "Due customers claimed and re-evaluated per turn of the deadline timer; events waiting on the worker go between turns, "
            "so a smaller claim lets them wait less during a mass drain and drains slower (docs/PERFORMANCE.md, row 8)"
        ),
    )
    status_interval_seconds: float = Field(1.0, gt=0, description="How often the worker measures its lag, deadline backlog and outbox (/metrics, /status)")
    sizes_interval_seconds: float = Field(5.0, gt=0, description="How often segment sizes are appended to the segflow:sizes stream (dashboard, /sizes)")
    sizes_history_len: int = Field(5000, ge=10, description="Entries kept in segflow:sizes (about; 5000 at 5 s = 7 h)")
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="Net container allocations between young garbage collections once the worker has started (with CPython's default, 700, collections cost ~3 µs per event of a worker's ~40); 0 keeps CPython's",
    )
    web_enabled: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    session_timeout_seconds: float = Field(10.0, gt=0, description="Kafka consumer group session timeout; a group join takes about half")
    data_dir: Path = Field(Path(".segflow"), description="Faust table/state directory")

    @property
    def lateness_ms(self) -> int:
        return int(self.lateness_seconds * 1000)

    @property
    def retention_ms(self) -> int:
        return int(self.retention_days * 86_400_000)

    @property
    def erasure_suppress_ms(self) -> int:
        return int(self.erasure_suppress_days * 86_400_000)

    @property
    def layout(self) -> Layout:
        """Redis key names; keys are laid out by input partition (features.keys)."""
        return Layout(self.partitions)

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def redacted(self) -> dict:
        """Settings as a dict safe to log: secrets masked, URL passwords hidden."""
        out = self.model_dump(mode="json")
        out["redis_url"] = redact_url(self.redis_url.get_secret_value())
        if self.kafka_password is not None:
            out["kafka_password"] = "**********"
        return out


def redact_url(url: str) -> str:
    """Hide the password part of a URL.

    >>> redact_url("rediss://user:s3cret@host:6380/0")
    'rediss://user:***@host:6380/0'
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def load_settings(path: str | os.PathLike | None = None, **overrides) -> Settings:
    """Settings from ``path`` (or ``$SEGFLOW_CONFIG``), the environment and ``overrides``."""
    path = path or os.environ.get("SEGFLOW_CONFIG")
    file_values: dict = {}
    if path:
        text = Path(path).read_text()
        try:
            file_values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise SettingsError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(file_values, dict):
            raise SettingsError(f"{path} line 1: expected a mapping of setting: value")
    env_names = {k[len("SEGFLOW_") :].lower() for k in os.environ if k.startswith("SEGFLOW_")}
    values = {k: v for k, v in file_values.items() if k not in env_names}
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, path, text if path else "")) from None


def _explain(exc: ValidationError, path, text: str) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        where = ""
        if path:
            for i, line in enumerate(text.splitlines(), 1):
                if line.split(":", 1)[0].strip() == str(err["loc"][0]):
                    where = f" line {i}"
                    break
        source = f"{path}{where}" if path else "settings"
        lines.append(f"{source}: {field}: {err['msg']}")
    return "\n".join(lines)
