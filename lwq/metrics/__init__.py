"""Importance metrics: one score per decoder block, plus the ranking built from them.

Each metric is registered under the name of its config file (`metric=zd` ->
`conf/metric/zd.yaml` -> `METRICS.get("zd")`). `lim` is the paper's name for `ldi`.
"""

from lwq.metrics import ldi, position, random_order, sensitivity, zd  # noqa: F401 (registers them)
from lwq.metrics.base import METRICS, Metric, Scores, ranking

__all__ = ["METRICS", "Metric", "Scores", "ranking"]
