"""segflow's streaming runtime: what a worker runs, and its I/O.

The Faust app and its agent and timers (:mod:`streams.app`), the per-batch
engine (:mod:`streams.engine`), event contracts (:mod:`streams.events`), topics,
the event-time watermark, the segment store and outbox in Redis, campaign
routing against Redis, producers and the example subscriber, and the worker's
HTTP surface (:mod:`streams.web`, :mod:`streams.queries`, ``static/``).

May import: :mod:`features`, :mod:`segmenter`. Never :mod:`lab` or :mod:`segflow`.
"""
