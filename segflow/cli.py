"""The ``segflow`` command line.

Every command reads :class:`~streams.settings.Settings` (``SEGFLOW_*``
environment variables or ``--config FILE``), so ``segflow customer`` finds the
same Redis the worker writes to. One module of about 570 lines: every
command is a thin typer wrapper registered on one app, and ``segflow --help``
lists them in the order they appear here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from streams.settings import Settings, SettingsError, load_settings

# No local variables in crash reports: they can hold a password (the kafka-python client arguments).
cli = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False, help="segflow: streaming, real-time customer segmentation.")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML settings file (default: $SEGFLOW_CONFIG)")


def _settings(config: Path | None, **overrides) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        typer.secho(f"bad settings: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def _sync_redis(settings: Settings):
    from streams.redis_clients import sync_client

    return sync_client(settings.redis_url.get_secret_value(), cluster=settings.redis_cluster, decode_responses=True, socket_connect_timeout=3)


def _kafka_config(settings: Settings) -> dict:
    """kafka-python keyword arguments for the security settings (TLS, SASL); exits on an impossible combination."""
    from streams.kafka_security import KafkaSecurityError, kafka_python_config

    try:
        return kafka_python_config(settings)
    except KafkaSecurityError as exc:
        typer.secho(f"bad settings: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def _echo(msg: object) -> None:
    """Echo to stderr; a non-text message (e.g. ProduceStats as progress) shows as its str()."""
    typer.echo(msg, err=True)


# -- running ---------------------------------------------------------------------


def _segmenter_factory(settings: Settings):
    from segmenter.assign import Segmenter
    from segmenter.config import default_config, load_config

    config = load_config(settings.segments_config) if settings.segments_config else default_config()
    return lambda: Segmenter.from_config(config)


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Run one Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    import faust

    from streams.admin import bootstrap_of, ensure_topics
    from streams.app import create_app

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s: %(message)s")
    _segmenter_factory(settings)  # a bad segments config fails here, before Kafka is touched
    from streams.campaign_router import campaigns_for

    campaigns_for(settings)  # and so does a bad campaigns file
    created = ensure_topics(bootstrap_of(settings.kafka_url), settings.topics, settings.partitions, _kafka_config(settings))
    if created:
        _echo(f"created topics: {', '.join(created)}")
    app = create_app(settings, _segmenter_factory(settings))
    _echo(f"segflow worker: kafka={settings.kafka_url} redis={settings.redacted()['redis_url']} clock={settings.clock}")
    if settings.web_enabled:
        _echo(f"dashboard: http://{settings.web_host}:{settings.web_port}/dashboard (JSON: /customers/ID, /segments, /flows, /sizes)")
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=False)
    worker.execute_from_commandline()


@cli.command()
def worker(config: Path | None = ConfigOpt, loglevel: str = typer.Option("warning", help="Faust's log level")):
    """Run a worker against an existing Kafka and Redis (production path)."""
    run_worker(_settings(config), loglevel)


@cli.command()
def up(
    config: Path | None = ConfigOpt,
    kafka_port: int = typer.Option(9092, help="Loopback port for the embedded broker"),
    redis_port: int = typer.Option(6379, help="Loopback port for the embedded Redis (with --redis-shards, the first node's)"),
    redis_shards: int = typer.Option(
        0, min=0, help="0: one Redis; N: a Redis Cluster of N primaries on --redis-port and the ports after it (SEGFLOW_REDIS_CLUSTER=true)"
    ),
    work_dir: Path = typer.Option(Path(".segflow"), help="Logs and Redis files"),
):
    """Start an embedded broker, Redis and one worker in the foreground until Ctrl-C."""
    from redis.exceptions import RedisError

    from lab.embedded import Broker, EmbeddedStack, RedisCluster, RedisServer

    if redis_shards and redis_port + redis_shards - 1 > 55535:
        typer.secho("--redis-port too high: a cluster node also listens on port + 10000", fg="red", err=True)
        raise typer.Exit(2)
    cluster = RedisCluster(shards=redis_shards, ports=[redis_port + i for i in range(redis_shards)]) if redis_shards else None
    stack = EmbeddedStack(work_dir=work_dir, broker=Broker(port=kafka_port), redis=RedisServer(port=redis_port), cluster=cluster)
    try:
        stack.start()
    except (OSError, RuntimeError, TimeoutError, RedisError) as exc:
        typer.secho(f"could not start the embedded stack: {exc} (is the port in use? try --kafka-port/--redis-port)", fg="red", err=True)
        raise typer.Exit(1) from None
    is_cluster = "true" if cluster else "false"
    os.environ["SEGFLOW_KAFKA_URL"] = stack.broker.url
    os.environ["SEGFLOW_REDIS_URL"] = stack.redis_url
    os.environ["SEGFLOW_REDIS_CLUSTER"] = is_cluster
    os.environ.setdefault("SEGFLOW_CLOCK", "event")
    where = f"a Redis Cluster of {redis_shards} primaries (seed {stack.redis_url})" if cluster else f"Redis on {stack.redis_url}"
    _echo(f"embedded broker on {stack.broker.bootstrap}, {where}; Ctrl-C stops all three")
    _echo(f"in another shell: export SEGFLOW_KAFKA_URL={stack.broker.url} SEGFLOW_REDIS_URL={stack.redis_url} SEGFLOW_REDIS_CLUSTER={is_cluster}")
    try:
        run_worker(_settings(config))
    finally:
        stack.stop()
        _echo("embedded broker and Redis stopped")


@cli.command()
def demo(
    seconds: float = typer.Option(float(os.environ.get("DEMO_SECONDS", 60)), help="How long to run (env DEMO_SECONDS)"),
    customers: int = typer.Option(300, help="Simulated customers"),
    days: float = typer.Option(45, help="Event-time span simulated"),
    seed: int = typer.Option(7),
):
    """Everything at once: embedded stack, worker, simulated customers, then a report."""
    from lab.demo import run_demo

    raise typer.Exit(run_demo(seconds=seconds, customers=customers, days=days, seed=seed))


# -- producing ---------------------------------------------------------------------


@cli.command()
def simulate(
    config: Path | None = ConfigOpt,
    customers: int = typer.Option(1000, help="Population size"),
    days: float = typer.Option(90, help="Event-time span to simulate"),
    rate: float = typer.Option(2000, help="Events per wall-clock second (0 = as fast as possible)"),
    seed: int = typer.Option(1),
    ground_truth: Path | None = typer.Option(None, help="Write the hidden personas and churn times here (JSON)"),
    profile_share: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of customers with profile updates (traits) on the profiles topic"),
):
    """Produce a simulated population to the input topics, in event time."""
    from lab.publish import produce_simulation
    from lab.simulate import Simulation
    from streams.admin import bootstrap_of, ensure_topics

    settings = _settings(config)
    sim = Simulation(customers=customers, days=days, seed=seed, profile_share=profile_share)
    if ground_truth:
        ground_truth.write_bytes(sim.ground_truth_json())
    bootstrap, kafka = bootstrap_of(settings.kafka_url), _kafka_config(settings)
    ensure_topics(bootstrap, settings.topics, settings.partitions, kafka)
    stats = produce_simulation(bootstrap, sim, settings.topics, rate=rate or None, progress=_echo, producer_config=kafka)
    _echo(f"done: {stats}")


@cli.command()
def produce(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    config: Path | None = ConfigOpt,
    rate: float = typer.Option(0, help="Events per second (0 = as fast as possible)"),
):
    """Publish events from a JSONL file (one event per line) to their topics."""
    from streams.admin import bootstrap_of, ensure_topics
    from streams.producer import produce_file

    settings = _settings(config)
    bootstrap, kafka = bootstrap_of(settings.kafka_url), _kafka_config(settings)
    ensure_topics(bootstrap, settings.topics, settings.partitions, kafka)
    stats = produce_file(bootstrap, file, settings.topics, rate=rate or None, progress=_echo, producer_config=kafka)
    _echo(f"done: {stats}")


@cli.command()
def reseed(
    reason: str = typer.Option(..., "--reason", help="Why the clusters start over (recorded with the new model version)"),
    seed: int | None = typer.Option(None, help="k-means seed for the fresh clusters (default: the segments config's)"),
    config: Path | None = ConfigOpt,
):
    """Request fresh behaviour clusters: the worker's next snapshot tick re-seeds, saves a new model version and records it in segflow:{drift}."""
    from features import keys

    settings = _settings(config)
    request = {"reason": reason, "requested_at_ms": int(time.time() * 1000)}
    if seed is not None:
        request["seed"] = seed
    pipe = _sync_redis(settings).pipeline(transaction=True)  # replaces a request not yet applied
    pipe.delete(keys.RESEED)
    pipe.hset(keys.RESEED, mapping=request)
    pipe.execute()
    _echo(f"reseed requested; a worker applies it within {settings.snapshot_interval_seconds:g}s (see XREVRANGE {keys.DRIFT} + - COUNT 5)")


@cli.command()
def forget(
    customer_id: str = typer.Argument(..., help="The customer to forget"),
    reason: str | None = typer.Option(None, "--reason", help="Why (a ticket number, say): kept in the request and the worker's log, not published"),
    config: Path | None = ConfigOpt,
):
    """Forget a customer: publish an erasure request; the worker that owns the customer's
    partition applies it in order with their events (features, segments, history, memberships,
    deadline and unsent changes removed; a final change to null per segmentation; their
    later events suppressed for SEGFLOW_ERASURE_SUPPRESS_DAYS). See docs/OPERATIONS.md, "Erasure"."""
    from datetime import UTC, datetime

    from streams.admin import bootstrap_of, ensure_topics
    from streams.erasure import erasure_request, publish_request

    settings = _settings(config)
    bootstrap, kafka = bootstrap_of(settings.kafka_url), _kafka_config(settings)
    ensure_topics(bootstrap, settings.topics, settings.partitions, kafka)
    request = erasure_request(customer_id, reason, datetime.now(UTC))
    partition = publish_request(bootstrap, settings.topics, settings.partitions, request, kafka)
    _echo(
        f"erasure requested: request {request.request_id} on {settings.topics.erasure}[{partition}]; `segflow customer {customer_id}` says unknown once a worker applied it"
    )


@cli.command("migrate-layout")
def migrate_layout(config: Path | None = ConfigOpt):
    """Re-lay Redis data of an older version, or of another SEGFLOW_PARTITIONS, in this
    version's key layout (keys by input partition). Stop the workers first; safe to re-run."""
    from streams.migrate_layout import migrate

    settings = _settings(config)
    if settings.redis_cluster:
        _echo("migrate-layout runs against a single Redis; migrate there, then import into the cluster (docs/OPERATIONS.md)")
        raise typer.Exit(2)
    _echo(f"re-laying Redis data for {settings.partitions} partitions ...")
    report = migrate(_sync_redis(settings), settings.layout, progress=_echo)
    _echo(
        f"done: {report.customers:,} customers ({report.keys_moved:,} keys), {report.members_moved:,} segment memberships, "
        f"{report.deadlines_moved:,} deadlines, {report.outbox_moved:,} outbox entries moved; "
        f"customers per partition: {', '.join(f'{p}: {n:,}' for p, n in sorted(report.per_partition.items()))}"
    )


# -- querying ----------------------------------------------------------------------


@cli.command("keys")
def key_names(
    customer_id: str | None = typer.Argument(None, help="A customer id: its keys. Without: every partition's keys"),
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json"),
):
    """Redis key names (they depend on SEGFLOW_PARTITIONS): one customer's, or every partition's (for redis-cli)."""
    layout = _settings(config).layout
    if customer_id is not None:
        p = layout.partition(customer_id)
        view: dict = {
            "partition": p,
            "features": layout.customer_key(customer_id),
            "segments": layout.segments_key(customer_id),
            "history": layout.history_key(customer_id),
            "deadlines": layout.deadlines_key(p),
            "filters": layout.filters_key(p),
        }
    else:
        view = {
            "partitions": [
                {
                    "partition": p,
                    "tag": tag,
                    "outbox": layout.outbox(p),
                    "deadlines": layout.deadlines_key(p),
                    "filters": layout.filters_key(p),
                    "stats": layout.stats(p),
                }
                for p, tag in enumerate(layout.tags)
            ]
        }
    if as_json:
        typer.echo(json.dumps(view, indent=2))
    elif customer_id is not None:
        typer.echo("\n".join(f"{k:<10} {v}" for k, v in view.items()))
    else:
        typer.echo("\n".join(f"{row['partition']:>3}  {{{row['tag']}}}  {row['outbox']}  {row['deadlines']}" for row in view["partitions"]))


@cli.command()
def customer(
    customer_id: str,
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json"),
    history: int = typer.Option(10, "--history", min=0, help="How many of the latest segment changes to show"),
):
    """A customer's features, current segments (since when, why), churn propensity and latest changes."""
    from streams.queries import customer_view

    settings = _settings(config)
    view = customer_view(_sync_redis(settings), customer_id, settings, history=history)
    if view is None:
        typer.secho(f"unknown customer: {customer_id!r}", fg="red", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(view, indent=2, default=str))
        return
    from streams.queries import format_customer

    typer.echo(format_customer(view))


@cli.command()
def segments(config: Path | None = ConfigOpt, as_json: bool = typer.Option(False, "--json")):
    """Size of every segment of every segmentation."""
    from streams.queries import format_sizes, segment_sizes

    settings = _settings(config)
    sizes = segment_sizes(_sync_redis(settings))
    typer.echo(json.dumps(sizes, indent=2) if as_json else format_sizes(sizes))


@cli.command()
def status(
    config: Path | None = ConfigOpt,
    interval: float = typer.Option(2.0, min=0.2, help="Seconds between the two samples the rates come from"),
    as_json: bool = typer.Option(False, "--json"),
    check: bool = typer.Option(False, "--check", help="Exit 1 when the verdict is BEHIND (for scripts and probes)"),
):
    """Is the engine keeping up? Consumer lag (whole group, from the broker), deadline backlog,
    outbox and rates, with a verdict (limits in streams/status.py)."""
    from streams.status import format_status as format_engine_status
    from streams.status import keeping_up, read_status

    settings = _settings(config)
    _kafka_config(settings)  # an impossible security combination exits here, with its reason
    _echo(f"sampling for {interval:g} s ...")
    result = read_status(_sync_redis(settings), settings, interval)
    typer.echo(json.dumps(result.as_dict(), indent=2) if as_json else format_engine_status(result))
    if check and not keeping_up(result)[0]:
        raise typer.Exit(1)


def _query_failed(exc: Exception):
    typer.secho(str(exc), fg="red", err=True)
    raise typer.Exit(2) from None


@cli.command()
def members(
    segment: str = typer.Argument(..., help="A segment name, or segmentation:segment when the name is in several segmentations"),
    config: Path | None = ConfigOpt,
    segmentation: str | None = typer.Option(None, "--segmentation", "-s", help="The segmentation the segment is in (`segflow segments` lists them)"),
    limit: int = typer.Option(100, "--limit", "-n", help="At most this many members (read with SSCAN)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Members of one segment (SSCAN, never SMEMBERS) and its size."""
    from streams.queries import QueryError, format_members, segment_catalogue, segment_members

    settings = _settings(config)
    try:
        view = segment_members(_sync_redis(settings), settings.layout, segment_catalogue(settings), segment, segmentation, limit)
    except QueryError as exc:
        _query_failed(exc)
    typer.echo(json.dumps(view, indent=2) if as_json else format_members(view))


@cli.command()
def flows(
    since: str = typer.Option("1h", "--since", help="How far back: 30m, 1h, 2d (hourly buckets, kept 8 days)"),
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json"),
):
    """Segment transitions (from x to) per segmentation, summed over the hourly flow counters."""
    from streams.queries import FLOWS_KEPT_S, QueryError, format_flows, parse_duration, segment_catalogue
    from streams.queries import flows as flows_query

    settings = _settings(config)
    try:
        view = flows_query(_sync_redis(settings), settings.layout, parse_duration(since, maximum_s=FLOWS_KEPT_S))
    except QueryError as exc:
        _query_failed(exc)
    typer.echo(json.dumps(view, indent=2) if as_json else format_flows(view, segment_catalogue(settings)))


@cli.command()
def preview(
    segments: Path = typer.Option(..., "--segments", help="The candidate segments YAML"),
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json"),
    examples: int = typer.Option(3, "--examples", min=0, max=100, help="Example customers per flow"),
    batch: int = typer.Option(1000, "--batch", min=10, max=100_000, help="Customers per SCAN batch and read pipeline"),
):
    """What a candidate segments config would do to today's customers, before it goes live:
    per segmentation, sizes now vs candidate and who would move where (with examples).
    Read-only: SCANs the customers in batches; nothing live changes."""
    from segmenter.config import ConfigError, load_config
    from segmenter.preview import format_preview
    from streams.preview import customer_count, live_snapshot, run_preview

    settings = _settings(config)
    try:
        candidate = load_config(segments)
    except (ConfigError, OSError) as exc:
        typer.secho(f"bad candidate config: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    redis = _sync_redis(settings)
    total = customer_count(redis, settings)
    with typer.progressbar(length=total or 0, label="customers", file=sys.stderr, show_pos=True) as bar:
        view = run_preview(
            redis, settings, candidate, live_snapshot(settings), examples=examples, batch=batch, progress=bar.update, candidate_name=str(segments)
        )
    typer.echo(json.dumps(view, indent=2) if as_json else format_preview(view))


@cli.command()
def backtest(
    segments: Path = typer.Option(..., "--segments", help="The candidate segments YAML"),
    days: float = typer.Option(30.0, "--days", min=0.01, help="Report the last N days of events (by event time)"),
    warmup_days: float = typer.Option(
        0.0, "--warmup-days", min=0.0, help="Replay this many days before the window first, unreported, so customers arrive with history"
    ),
    file: Path | None = typer.Option(None, "--file", help="Events from this JSONL file (`segflow produce`'s format) instead of the input topics"),
    campaigns_file: Path | None = typer.Option(None, "--campaigns", help="Campaigns for the candidate (default: the live ones, checked against the candidate)"),
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json"),
):
    """Replay the last N days of events through the candidate config and the live one, in-process:
    per day, changes, changes per customer, flaps and campaign triggers, entered/exited per segment,
    live next to candidate. Nothing live is written."""
    from lab.backtest import decode_records, format_backtest, records_from_file, records_from_topics, run_backtest, window
    from segmenter.campaigns import load_campaigns, parse_campaigns
    from segmenter.config import ConfigError, default_config, load_config
    from streams.campaign_router import campaigns_for

    settings = _settings(config)
    try:
        candidate = load_config(segments)
        live = load_config(settings.segments_config) if settings.segments_config else default_config()
        live_campaigns = campaigns_for(settings)
        if campaigns_file is not None:
            candidate_campaigns = load_campaigns(campaigns_file, candidate)
        else:
            candidate_campaigns = parse_campaigns(live_campaigns.model_dump_json(), "the live campaigns (checked against the candidate)", candidate)
    except ConfigError as exc:
        typer.secho(f"bad config: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    if file is not None:
        records = list(records_from_file(str(file)))
    else:
        from streams.admin import bootstrap_of

        records = records_from_topics(bootstrap_of(settings.kafka_url), list(settings.topics.by_family.items()), _echo, **_kafka_config(settings))
    events, invalid = decode_records(records)
    if invalid:
        _echo(f"skipped {sum(invalid.values()):,} invalid events: {dict(invalid)}")
    events, report_from = window(events, days, warmup_days)
    if not events:
        typer.secho("no events to replay", fg="red", err=True)
        raise typer.Exit(1)
    _echo(f"replaying {len(events):,} events through the live and the candidate config (two processes)")
    view = {
        **run_backtest(events, report_from, (live, live_campaigns), (candidate, candidate_campaigns)),
        "candidate_name": str(segments),
        "invalid": dict(invalid),
    }
    typer.echo(json.dumps(view, indent=2) if as_json else format_backtest(view))


@cli.command()
def schemas(out_dir: Path | None = typer.Option(None, help="Write one .json file per schema here")):
    """JSON Schemas of the input events, the segment-change and the campaign-trigger contracts."""
    from segmenter.campaigns import campaign_trigger_json_schema
    from segmenter.changes import segment_change_json_schema
    from streams.events import json_schemas

    all_schemas = {**json_schemas(), "segment-change": segment_change_json_schema(), "campaign-trigger": campaign_trigger_json_schema()}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, schema in all_schemas.items():
            (out_dir / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
        _echo(f"wrote {len(all_schemas)} schemas to {out_dir}")
    else:
        typer.echo(json.dumps(all_schemas, indent=2))


@cli.command()
def campaigns(config: Path | None = ConfigOpt):
    """The campaigns the worker routes segment changes to (SEGFLOW_CAMPAIGNS_FILE or the shipped ones)."""
    from segmenter.config import ConfigError
    from streams.campaign_router import campaigns_for

    settings = _settings(config)
    try:
        routed = campaigns_for(settings)
    except ConfigError as exc:
        typer.secho(f"bad campaigns: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"marketing consent: declined -> no trigger; never said (no profile) -> {routed.consent.unknown}")
    for c in routed.campaigns:
        p = c.policy
        cap = f"{p.max_triggers} per {p.period_ms / 86_400_000:g}d" if p.max_triggers else "no cap"
        cooldown = f", cooldown {p.cooldown_ms / 86_400_000:g}d" if p.cooldown_ms else ""
        typer.echo(f"{c.name:16} control {c.control_share:.0%}, {cap}{cooldown}: {c.describe()}")


@cli.command()
def subscribe(
    campaign: str | None = typer.Option(None, "--campaign", help="The campaign whose triggers to receive"),
    changes: bool = typer.Option(False, "--changes", help="Follow segment-changes instead: print each change a subscriber applies (repeats dropped by seq)"),
    group: str | None = typer.Option(None, "--group", help="Kafka consumer group (default: segflow-campaign-<campaign>, or segflow-changes)"),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest trigger on the topic, even if the group has committed offsets"),
    max_triggers: int = typer.Option(0, "--max", help="Stop after this many triggers (0: until Ctrl-C)"),
    idle_timeout: float = typer.Option(0, "--idle-timeout", help="Stop after this many seconds without a trigger (0: never)"),
    config: Path | None = ConfigOpt,
):
    """Example campaign-system subscriber: print one campaign's triggers (or, --changes, the segment changes) as JSON lines.

    Reads campaign-triggers in a consumer group, keeps the triggers of
    --campaign, drops re-sent duplicates by trigger_id (remembered in memory
    while it runs) and commits offsets after printing (at-least-once).
    """
    from streams.subscriber import subscribe as run_subscriber
    from streams.subscriber import subscribe_changes

    settings = _settings(config)
    _kafka_config(settings)  # impossible security settings: exit 2 before connecting
    if changes:
        counts = subscribe_changes(
            settings,
            group=group,
            from_beginning=from_beginning,
            max_changes=max_triggers or None,
            idle_timeout=idle_timeout or None,
            out=lambda line: typer.echo(line),
            note=_echo,
        )
        _echo(f"{counts['applied']} changes applied, {counts['repeats']} repeats dropped, {counts['chain_breaks']} chain breaks, {counts['seq_gaps']} seq gaps")
        return
    if campaign is None:
        typer.secho("give --campaign NAME (triggers) or --changes (segment changes)", fg="red", err=True)
        raise typer.Exit(2)
    stats = run_subscriber(
        settings,
        campaign,
        group=group,
        from_beginning=from_beginning,
        max_triggers=max_triggers or None,
        idle_timeout=idle_timeout or None,
        out=lambda line: typer.echo(line),
        note=_echo,
    )
    _echo(
        f"{stats['received']} triggers for {campaign} ({stats['treatment']} treatment, {stats['holdout']} holdout), "
        f"{stats['duplicates']} duplicates dropped, {stats['other']} for other campaigns skipped"
    )


@cli.command()
def topics(config: Path | None = ConfigOpt, create: bool = typer.Option(False, "--create", help="Create missing topics")):
    """List segflow's topics (and create them with --create)."""
    settings = _settings(config)
    for name, purpose in settings.topics.describe():
        typer.echo(f"{name:24} {purpose}")
    if create:
        from streams.admin import bootstrap_of, ensure_topics

        created = ensure_topics(bootstrap_of(settings.kafka_url), settings.topics, settings.partitions, _kafka_config(settings))
        _echo(f"created: {', '.join(created) or 'nothing (all exist)'}")


@cli.command()
def features():
    """The feature catalogue."""
    from features.catalogue import CATALOGUE

    for f in CATALOGUE:
        window = f"{f.window}d" if f.window else "-"
        typer.echo(f"{f.name:30} {f.unit:9} {window:>4}  {f.description}")


@cli.command()
def docs(docs_dir: Path = typer.Option(Path("docs"), help="Folder of the Markdown docs")):
    """Regenerate the tables in docs/ that come from code (features, topics, settings)."""
    from lab.docgen import update

    changed = update(docs_dir)
    _echo(f"updated: {', '.join(map(str, changed)) or 'nothing (all current)'}")


@cli.command()
def evaluate(
    customers: int = typer.Option(2000, help="Simulated customers"),
    days: float = typer.Option(120, help="Event-time span simulated"),
    seed: int = typer.Option(1),
    segments_config: Path | None = typer.Option(None, "--segments", help="Segmentation YAML (default: the shipped one)"),
    settle_days: int = typer.Option(30, help="Clustering is scored over these last days"),
    detect_days: float = typer.Option(21, help="at_risk must follow a customer's silence within this many days"),
    revert_days: float = typer.Option(7, help="A->B->A within this many days counts as a flap"),
    out: Path | None = typer.Option(None, help="JSON output (default docs/quality/quality-DATE-CxD-sSEED.json)"),
    no_write: bool = typer.Option(False, "--no-write", help="Print only"),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON instead of the tables"),
    dataset: str = typer.Option(
        "simulated", help="simulated (in-process, against the hidden personas) or cdnow (real purchases through broker, worker and Redis)"
    ),
    sample_every: int = typer.Option(1, help="cdnow: keep one customer in N (10 = the 2005 paper's sample size)"),
):
    """Score the segments: a simulated population replayed in-process against its hidden truth, or
    (--dataset cdnow) real purchases streamed through the engine against the holdout and the batch BG/NBD."""
    from datetime import date

    if dataset == "cdnow":
        from lab.cdnow import evaluate_cdnow
        from lab.cdnow import format_report as format_cdnow
        from lab.cdnow import to_json as cdnow_json

        result = evaluate_cdnow(sample_every=sample_every, say=_echo)
        typer.echo(cdnow_json(result) if as_json else format_cdnow(result))
        if not no_write:
            path = out or Path("docs/quality") / f"cdnow-{date.today().isoformat()}-1in{sample_every}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(cdnow_json(result))
            _echo(f"wrote {path}")
        return
    if dataset != "simulated":
        typer.secho(f"unknown dataset {dataset!r}: simulated or cdnow", fg="red", err=True)
        raise typer.Exit(2)

    from lab.evaluate import evaluate as run_evaluation
    from lab.evaluate import format_report, to_json
    from segmenter.config import ConfigError, default_config, load_config

    try:
        config = load_config(segments_config) if segments_config else default_config()
    except ConfigError as exc:
        typer.secho(f"bad segments config: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    report = run_evaluation(customers, days, seed, config, settle_days=settle_days, detect_within_days=detect_days, revert_days=revert_days, progress=_echo)
    report["command"] = "segflow evaluate " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "segflow evaluate"
    report["date"] = date.today().isoformat()
    typer.echo(to_json(report) if as_json else format_report(report))
    if not no_write:
        path = out or Path("docs/quality") / f"quality-{report['date']}-{customers}x{days:g}-s{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_json(report))
        _echo(f"wrote {path}")


@cli.command("config")
def show_config(config: Path | None = ConfigOpt):
    """Effective settings (secrets masked) and the environment variable of each."""
    settings = _settings(config)
    for name, value in settings.redacted().items():
        typer.echo(f"{name:28} {value!s:40} SEGFLOW_{name.upper()}")


@cli.command()
def bench(
    events: int | None = typer.Option(None, help="Backlog size (default 300000; 20000 with --quick)"),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: a smoke run of about 2.5 minutes"),
    out: Path | None = typer.Option(None, help="JSON output (default docs/bench/bench-DATE.json)"),
    scale_max: bool = typer.Option(False, "--scale-max", help="Also measure 1 million customers (slow)"),
    profile: Path | None = typer.Option(None, help="py-spy raw profile of the worker during the end-to-end row"),
    latency_rate: float | None = typer.Option(None, help="Offered load for the latency row (default: half the sustained rate)"),
):
    """Benchmark on an embedded stack: ceilings, segflow end to end, latency, scale; one table + JSON."""
    from lab.bench import BenchOptions
    from lab.bench import main as bench_main

    kw: dict[str, Any] = {
        k: v for k, v in dict(events=events, out=out, scale_max=scale_max, profile=profile, latency_rate=latency_rate).items() if v is not None
    }
    opts = BenchOptions.quick_run(**kw) if quick else BenchOptions(**kw)
    raise typer.Exit(bench_main(opts))


@cli.command()
def soak(
    minutes: float = typer.Option(60, help="Minutes of traffic (make soak: SOAK_MINUTES, default 60)"),
    rate: float = typer.Option(1000, help="Events per second, fixed (default: about half the sustained rate)"),
    fault_every: float = typer.Option(60, help="Seconds between faults (worker SIGKILL, worker SIGTERM, Redis SIGTERM, Redis SIGKILL, in turn; 0: none)"),
    customers: int = typer.Option(2000, help="Simulated customers"),
    seed: int = typer.Option(1),
    drain_timeout: float = typer.Option(300, help="At most this many seconds for the worker to catch up at the end"),
    out: Path | None = typer.Option(None, help="Also write the report here (JSON)"),
    partitions: int = typer.Option(1, help="Partitions per input topic (the embedded broker's fetch cost grows with batches per partition)"),
    linger_ms: int = typer.Option(250, help="Producer linger: fewer, larger batches on the broker"),
    fetch_max_wait_ms: int = typer.Option(250, help="The worker's SEGFLOW_FETCH_MAX_WAIT_MS"),
    redis_shards: int = typer.Option(
        0, min=0, help="0: one Redis; N: a Redis Cluster of N primaries, Redis faults on each node in turn (give --partitions a multiple of N)"
    ),
):
    """Fixed-rate traffic with periodic faults on an embedded stack, then: sent - applied - dead-lettered (must be 0) and features vs the reference."""
    from lab.soak import SoakOptions, run_soak

    command = "segflow soak " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "segflow soak"
    opts = SoakOptions(
        minutes=minutes,
        rate=rate,
        fault_every=fault_every,
        customers=customers,
        seed=seed,
        drain_timeout=drain_timeout,
        out=out,
        command=command,
        partitions=partitions,
        linger_ms=linger_ms,
        fetch_max_wait_ms=fetch_max_wait_ms,
        redis_shards=redis_shards,
    )
    code, _ = run_soak(opts, say=_echo)
    raise typer.Exit(code)


def _unreachable(exc: BaseException) -> str | None:
    """One line naming the service a command could not reach, or None for another error."""
    import kafka.errors
    import redis

    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return f"cannot reach Redis at {_where('redis_url')}: {exc}"
    unreachable_kafka = tuple(
        getattr(kafka.errors, name) for name in ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError") if hasattr(kafka.errors, name)
    )
    if isinstance(exc, unreachable_kafka):
        return f"cannot reach the Kafka broker at {_where('kafka_url')}: {type(exc).__name__}: {exc}".rstrip(": ")
    return None


def _where(setting: str) -> str:
    """The URL a command used (from SEGFLOW_* / --config as the command read it), password hidden."""
    try:
        value = getattr(load_settings(_config_arg()), setting)
        url = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    except Exception:  # the settings themselves are broken: that error was reported already
        return "(unknown)"
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return url if parts.password is None else url.replace(f":{parts.password}@", ":***@")


def _config_arg() -> Path | None:
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def main() -> None:
    try:
        cli()
    except Exception as exc:  # usage errors and --help exit inside cli(); this is what a command raised
        line = _unreachable(exc)
        if line is None:
            raise
        typer.secho(f"segflow: {line}", fg="red", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
