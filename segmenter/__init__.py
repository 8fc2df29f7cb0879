"""segflow's segmenter: the pure core that turns a feature vector into segments.

No I/O and no clock: every function is given ``now_ms`` and the features, so
the same inputs always give the same segments (replays, tests). The Faust
shell (:mod:`streams.engine`) persists what :class:`segmenter.assign.Segmenter`
decides.

Modules, one job each:

- :mod:`segmenter.config`      the YAML segmentation config, validated, with line numbers in errors
- :mod:`segmenter.bgnbd`       the BG/NBD buy-till-you-die model: fit, P(alive), expected purchases
- :mod:`segmenter.churn`       churn propensity from each customer's purchase rhythm (BG/NBD)
- :mod:`segmenter.engagement`  a transparent score of fading activity (visits, logins)
- :mod:`segmenter.scoring`     AUC, Brier, reliability, precision/recall of a churn signal
- :mod:`segmenter.rules`       ordered first-match rules and when time alone will change them
- :mod:`segmenter.clustering`  River k-means behind stable, human segment names
- :mod:`segmenter.value`       RFM scores from streaming quantiles
- :mod:`segmenter.hysteresis`  min dwell time, urgent segments, distance margin
- :mod:`segmenter.changes`     the segment-change event contract
- :mod:`segmenter.campaigns`   campaign routing from changes: triggers, holdout arms, cap model
- :mod:`segmenter.assign`      all of the above for one customer
- :mod:`segmenter.flaps`       flap rate of a list of changes (measurement)

May import: :mod:`features` (pure modules). Nothing from :mod:`streams`, :mod:`lab`, :mod:`segflow`.
"""
