"""Per-customer features: the pure state and math, and the Redis store that applies them.

- :mod:`features.catalogue`  every feature, its definition and ``compute(state, now)``
- :mod:`features.state`      the raw per-customer state and ``apply_delta`` (reference fold)
- :mod:`features.extract`    event -> delta
- :mod:`features.codec`      the Redis hash layout of the state
- :mod:`features.keys`       Redis key names (one hash tag per customer)
- :mod:`features.store`, :mod:`features.pipeline`, ``segflow.lua``  the fold in Redis, pipelined

May import: :mod:`streams.events` (the event contracts, for :mod:`features.extract`); nothing else of :mod:`streams`, and never :mod:`lab` or :mod:`segflow`.
"""
