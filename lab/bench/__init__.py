"""``segflow bench`` / ``make bench``: one run, one table, side by side.

Everything runs on one :class:`~lab.embedded.EmbeddedStack` (Tansu broker
+ Redis on loopback) in one invocation, so the rows are comparable even on a
shared, noisy machine; ratios matter more than absolute numbers. Rows:

1. load generator: kafka-python producer of pre-serialised simulated events
   (the backlog every later consumer row reads);
2. raw aiokafka consumer reading that backlog;
3. bare Faust agent (same Faust settings as :func:`streams.app.create_app`),
   a subprocess, in two shapes: ``async for value in stream`` and
   ``stream.take_events`` batches as the worker uses;
4. Redis ceiling: pipelined ``FCALL segflow_apply``, batches like the worker's;
5. segflow end to end: a real ``segflow worker`` subprocess on the backlog,
   events/s from its ``segflow:stats`` hash;
6. latency at a fixed offered load, producer timestamp -> segment change read
   back from the changes topic: row 5's kind of traffic (event clock) at half the
   sustained rate of row 5, with its floor (the same traffic read by consumers that
   do nothing), and at lower fractions of that rate (``latency_mix_sweep``); fresh
   customers only (wall clock) at half the rate, at 100 ev/s and at a few rates
   between (``latency_sweep``); the sweeps show where p99 crosses 100 ms;
7. Redis memory per customer and per-event cost of ``segflow_apply`` at 10k,
   100k (and 1M with ``--scale-max``) customers, state populated directly;
8. ``mass_silence``: 10,000 (``--quick``) and 100,000 customers fall due in the
   same second (:mod:`lab.bench.mass_silence`): evaluations per second, and the
   latency of events arriving during the drain against the same probe before it;
   8b (full run only) the 10,000 cohort again with two workers in one group.

Progress goes to stderr; the table to stdout; the JSON to ``docs/bench/``
(or ``--out``). Every subprocess and server is stopped at the end, also on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

from lab.bench.ceilings import faust_app_kwargs
from lab.bench.common import BenchOptions
from lab.bench.run import main

__all__ = ["BenchOptions", "faust_app_kwargs", "main"]
