"""A command that cannot reach Redis or the broker says so in one line and exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lab.embedded import free_port


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW_")}
    return subprocess.run([sys.executable, "-m", "segflow.cli", *args], env={**clean, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["segments"], ["customer", "c1"], ["members", "lifecycle:active"]])
def test_redis_down(args):
    port = free_port()
    done = run(args, SEGFLOW_REDIS_URL=f"redis://:secret@127.0.0.1:{port}/0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in lines[0], done.stderr
    assert "secret" not in done.stderr


def test_broker_down(tmp_path):
    port = free_port()
    events = tmp_path / "events.jsonl"
    events.write_text('{"type":"login","event_id":"e1","customer_id":"c1","occurred_at":"2026-12-01T00:00:00Z","success":true}\n')
    done = run(["produce", str(events)], SEGFLOW_KAFKA_URL=f"kafka://127.0.0.1:{port}")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Kafka broker at kafka://127.0.0.1:{port}" in lines[0], done.stderr
