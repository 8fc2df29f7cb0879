"""The mass-silence row's drain breakdown from a py-spy speedscope profile (lab.bench.mass_silence)."""

import json

from lab.bench.mass_silence import PROFILE_HZ, drain_breakdown


def test_drain_breakdown_counts_the_window_before_the_profiles_end(tmp_path):
    frames = [
        "run",
        "create_app.<locals>.deadlines",
        "Engine._fire_deadlines",
        "create_app.<locals>.ingest",
        "EpollSelector.select",
        "Sender._send_produce_req",
    ]
    fire, publish, ingest, idle, kafka = [0, 1, 2], [0, 1], [0, 3], [0, 4], [0, 5]
    # 1 s of ingest (outside the window), then 1 s: half evaluating, a quarter publishing, a tenth each idle and Kafka, 5% ingest, 0 s after
    window = [fire] * 50 + [publish] * 25 + [idle] * 10 + [kafka] * 10 + [ingest] * 5
    main = {"name": 'Thread 42 ""', "samples": [ingest] * PROFILE_HZ + window}
    other = {"name": 'Thread 43 "kafka-io"', "samples": [kafka] * 200}
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"shared": {"frames": [{"name": n} for n in frames]}, "profiles": [other, main]}))
    shares = drain_breakdown(path, 42, start_before_end_s=1.0, end_before_end_s=0.0)
    assert shares == {
        "deadline evaluation (claim, read, evaluate, commit)": 0.5,
        "deadline changes published": 0.25,
        "idle (event loop waiting)": 0.1,
        "Kafka client, timers, other": 0.1,
        "event ingest (the probe)": 0.05,
    }
