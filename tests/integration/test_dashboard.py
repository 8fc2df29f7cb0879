"""Ops views on the real stack: CLI and HTTP queries, and the dashboard in headless Chromium.

The browser test needs ``chromium`` on PATH (Debian: ``apt-get install -y
chromium``; ``.ci/run`` installs it). Without it the test fails, it does not skip.
``SEGFLOW_DASHBOARD_PNG=docs/dashboard.png`` also saves the screenshot there
(``make dashboard-png``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from features.codec import TOMBSTONE
from lab.publish import produce_simulation
from lab.simulate import Simulation
from segmenter.config import SEGMENTATIONS, default_config, default_config_text
from streams.segment_store import StoredAssignment
from tests.kafka_helpers import fresh_topics

pytestmark = pytest.mark.integration


def http(base: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(base + path, timeout=20) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def wait_for(what: str, probe, timeout: float = 90.0, worker=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, ValueError) as exc:  # web server not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    tail = worker.log()[-3000:] if worker else ""
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\nworker log tail:\n{tail}")


def populated_worker(broker, start_worker, customers: int = 150, days: float = 20, rate: float = 4000):
    """A worker fed a simulated population (paced, so sizes move over several samples)."""
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_SIZES_INTERVAL_SECONDS="1")
    base = f"http://127.0.0.1:{worker.env['SEGFLOW_WEB_PORT']}"
    wait_for("the worker's web server", lambda: http(base, "/healthz")[0] == 200, worker=worker)
    sim = Simulation(customers=customers, days=days, seed=11)
    feeder = threading.Thread(target=produce_simulation, args=(broker.bootstrap, sim, topics, rate), kwargs={"progress": lambda m: None}, daemon=True)
    feeder.start()
    return worker, base, feeder


def wait_until_quiet(base: str, worker, feeder) -> None:
    """The feed is produced and the worker has made no segment change for 3 samples (3 s)."""
    feeder.join(120)

    def quiet():
        changes = http(base, "/sizes?since=10m")[1]["changes"]
        return len(changes) >= 4 and changes[-1] and len(set(changes[-4:])) == 1

    wait_for("the worker to go quiet", quiet, timeout=120, worker=worker)


def cli(worker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segflow.cli", *args], env=worker.env, capture_output=True, text=True, timeout=60)


def test_ops_queries_over_http_and_cli(broker, redis_client, start_worker):
    worker, base, feeder = populated_worker(broker, start_worker, customers=80, days=15)
    sizes = wait_for("lifecycle members", lambda: (lambda s: s if sum(s[1]["lifecycle"].values()) >= 20 else None)(http(base, "/segments")), worker=worker)
    assert sizes[0] == 200 and set(sizes[1]) == set(SEGMENTATIONS)
    wait_until_quiet(base, worker, feeder)
    sizes = http(base, "/segments")

    # Members: SSCAN, ambiguous names refused, segmentation:segment accepted.
    segment = max(sizes[1]["lifecycle"], key=sizes[1]["lifecycle"].get)
    status, body = http(base, f"/segments/lifecycle:{segment}/members?limit=5")
    assert status == 200, body
    assert body["segmentation"] == "lifecycle" and len(body["members"]) == min(5, body["size"])
    member = body["members"][0]
    assert redis_client.sismember(worker.layout.member_set(worker.layout.partition(member), "lifecycle", segment), member)
    status, body = http(base, "/segments/dormant/members")
    assert status == 400 and "more than one segmentation" in body["error"]
    assert http(base, "/segments/dormant/members?segmentation=behaviour")[0] == 200
    for bad in (
        "/segments/lifecycle:active/members?limit=lots",
        "/segments/nope/members",
        "/flows?since=yesterday",
        "/sizes?since=-1h",
        "/customers/c000001?history=x",
    ):
        status, body = http(base, bad)
        assert status == 400 and body["error"], (bad, status, body)

    # Customers: known -> segments with since/why/churn; unknown -> 404 with a clear body.
    cid = http(base, f"/segments/lifecycle:{segment}/members?limit=1")[1]["members"][0]
    status, view = http(base, f"/customers/{cid}?history=3")
    assert status == 200 and view["segments"]["lifecycle"]["segment"] == segment
    assert view["segments"]["lifecycle"]["since"] and view["segments"]["lifecycle"]["reason"]
    assert "churn_propensity" in view and len(view["history"]) <= 3
    status, body = http(base, "/customers/no-such-customer")
    assert status == 404 and "unknown customer" in body["error"]

    # Flows and sizes over time.
    status, fl = http(base, "/flows?since=1h")
    assert status == 200 and fl["total"] > 0
    assert any(c["from"] is None and c["to"] == segment for c in fl["segmentations"]["lifecycle"])
    series = wait_for("3 recorded size samples", lambda: (lambda r: r if len(r[1]["t"]) >= 3 else None)(http(base, "/sizes?since=10m")), worker=worker)[1]
    assert set(series["segmentations"]["lifecycle"]) == {"new", "active", "at_risk", "dormant", "churned"}
    assert series["changes"][-1] > 0 and len(series["change_rate"]) == len(series["t"])

    # The CLI runs the same queries.
    out = cli(worker, "members", "dormant")
    assert out.returncode == 2 and "more than one segmentation" in out.stderr
    out = cli(worker, "members", f"lifecycle:{segment}", "--limit", "3", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["members"]) == min(3, sizes[1]["lifecycle"][segment])
    out = cli(worker, "flows", "--since", "2h")
    assert out.returncode == 0 and "lifecycle:" in out.stdout and "(entered)" in out.stdout, out.stdout + out.stderr
    out = cli(worker, "customer", cid, "--history", "2")
    assert out.returncode == 0 and f"lifecycle  {segment}" in out.stdout, out.stdout + out.stderr


class _Dom(HTMLParser):
    """Elements of interest in Chromium's --dump-dom output."""

    def __init__(self):
        super().__init__()
        self.body: dict = {}
        self.charts: dict[str, dict] = {}
        self.canvases: list[dict] = []
        self.result: dict = {}
        self.worker_status: dict = {}
        self.segment_cells: list[str] = []
        self._in_segment = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "div" and "chart" in (a.get("class") or "").split() and a.get("data-key"):
            self.charts[a["data-key"]] = a
        elif tag == "canvas":
            self.canvases.append(a)
        elif tag == "div" and a.get("id") == "customer-result":
            self.result = a
        elif tag == "div" and a.get("id") == "worker-status":
            self.worker_status = a
        elif tag == "td" and a.get("class") == "segment":
            self._in_segment = True

    def handle_data(self, data):
        if self._in_segment:
            self.segment_cells.append(data.strip())
            self._in_segment = False


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not on PATH: the dashboard test needs a headless browser. Install it with `apt-get install -y chromium` (.ci/run does)")
    return path


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=15000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_dashboard_renders_charts_and_customer_lookup(broker, redis_client, start_worker, tmp_path):
    browser = chromium()  # fail fast, before the stack is started
    worker, base, feeder = populated_worker(broker, start_worker)
    wait_for(
        "5 size samples with members",
        lambda: (lambda r: r if len(r[1]["t"]) >= 5 and r[1]["changes"][-1] else None)(http(base, "/sizes?since=10m")),
        worker=worker,
    )
    wait_until_quiet(base, worker, feeder)
    cid = next((c for s in ("active", "new") for key in worker.layout.member_sets("lifecycle", s) if (c := redis_client.srandmember(key))), None)
    assert cid, "no customer in lifecycle active/new"
    lifecycle = StoredAssignment.decode(redis_client.hget(worker.layout.segments_key(cid), "lifecycle")).segment

    url = f"{base}/dashboard?customer={cid}&since=1h"
    out = run_chromium(tmp_path, "--dump-dom", url)
    assert out.returncode == 0, f"{browser} failed: {out.stderr[-2000:]}"
    dom = _Dom()
    dom.feed(out.stdout)
    assert int(dom.body.get("data-ready", 0)) >= 1, f"the page never finished a refresh: {out.stdout[:3000]}"
    assert dom.body.get("data-charts") == str(len(SEGMENTATIONS) + 2), dom.body  # sizes per segmentation, change rate, lag
    config = default_config()
    expected = {f"sizes-{name}": len(config.segments_of(name)) for name in SEGMENTATIONS} | {"change-rate": 1}
    for key, lines in expected.items():
        chart = dom.charts.get(key)
        assert chart is not None, f"chart {key} missing; have {sorted(dom.charts)}"
        assert int(chart["data-series"]) == lines and int(chart["data-points"]) >= 5, (key, chart)
    # the worker's own lag and backlog (/status): quiet, so keeping up with nothing behind
    assert dom.charts["lag"]["data-series"] == "3" and int(dom.charts["lag"]["data-points"]) >= 1, dom.charts["lag"]
    assert dom.worker_status.get("data-verdict") == "keeping-up", dom.worker_status
    assert dom.worker_status.get("data-lag") == "0" and dom.worker_status.get("data-backlog") == "0", dom.worker_status
    drawn = [c for c in dom.canvases if int(c.get("width", 0)) > 0 and int(c.get("height", 0)) > 0]
    assert len(drawn) >= 5, f"uPlot canvases with a size: {dom.canvases}"
    assert re.search(r'<table class="flow" data-segmentation="lifecycle" data-rows="[1-9]', out.stdout), "flows table missing"
    assert dom.result.get("data-status") == "ok" and dom.result.get("data-customer") == cid, dom.result
    assert lifecycle in dom.segment_cells, (lifecycle, dom.segment_cells)

    # An unknown customer is reported as such on the page.
    out = run_chromium(tmp_path, "--dump-dom", f"{base}/dashboard?customer=nobody-at-all")
    dom = _Dom()
    dom.feed(out.stdout)
    assert dom.result.get("data-status") == "not-found" and "unknown customer" in out.stdout

    png = tmp_path / "dashboard.png"
    out = run_chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,1500", url)
    assert png.exists() and png.stat().st_size > 20_000, out.stderr[-2000:]
    if os.environ.get("SEGFLOW_DASHBOARD_PNG"):
        shutil.copyfile(png, os.environ["SEGFLOW_DASHBOARD_PNG"])


def post(base: str, path: str, body: str) -> tuple[int, dict]:
    request = urllib.request.Request(base + path, data=body.encode(), method="POST", headers={"Content-Type": "text/yaml"})
    try:
        with urllib.request.urlopen(request, timeout=120) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_preview_over_http_and_on_its_dashboard_page(broker, redis_client, start_worker, tmp_path):
    chromium()  # fail fast, before the stack is started
    worker, base, feeder = populated_worker(broker, start_worker, customers=60, days=15)
    wait_until_quiet(base, worker, feeder)
    status, live = http(base, "/preview/config")
    assert status == 200 and live["yaml"] == default_config_text()

    rule = '        - {feature: tenure_days, op: "<", value: 14}'
    status, view = post(base, "/preview", live["yaml"].replace(rule, rule.replace("14", "30")))
    assert status == 200, view
    stored = sum(1 for key in redis_client.scan_iter(match="cf:{*", count=1000) if redis_client.hget(key, TOMBSTONE) is None)
    assert view["customers"] == stored > 0
    for s in view["segmentations"].values():
        assert sum(n["now"] for n in s["sizes"].values()) == sum(n["candidate"] for n in s["sizes"].values()) == stored
    assert {f["to"] for f in view["segmentations"]["lifecycle"]["flows"]} <= {"new", "at_risk", "dormant", "churned", "active"}

    status, refused = post(base, "/preview", live["yaml"].replace(rule, rule.replace("tenure_days", "tenure_dayz")))
    assert status == 400 and f"candidate line {live['yaml'].splitlines().index(rule) + 1}" in refused["error"], refused

    out = run_chromium(tmp_path, "--dump-dom", f"{base}/dashboard/preview?run=1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r'<div id="preview-result" data-status="ok"', out.stdout), out.stdout[:3000]
    tables = re.findall(r'<table class="preview" data-segmentation="(\w+)" data-moved="(\d+)" data-held="(\d+)"', out.stdout)
    assert [name for name, _, _ in tables] == list(SEGMENTATIONS), tables
