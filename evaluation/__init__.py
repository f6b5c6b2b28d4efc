"""Floor 3 of retr: metrics (through ir-measures/pytrec_eval), ``evaluate(retriever, dataset)``, reports."""
from .evaluate import EvalResult, evaluate, remove_identical_ids
from .metrics import DEFAULT_METRICS, compute_metrics, per_query_metrics

__all__ = ["DEFAULT_METRICS", "EvalResult", "compute_metrics", "evaluate", "per_query_metrics", "remove_identical_ids"]
