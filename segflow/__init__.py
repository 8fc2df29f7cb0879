"""The ``segflow`` command line (:mod:`segflow.cli`): the top of the import graph.

May import every other package; nothing imports it. The worker's HTTP surface
lives with the runtime (:mod:`streams.web`, :mod:`streams.queries`).
"""
