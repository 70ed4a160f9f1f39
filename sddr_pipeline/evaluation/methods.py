"""The methods an evaluation scores, and their display names."""
from __future__ import annotations

#: Every method :func:`~.runner.evaluate_dataset` scores (see its module docstring).
METHODS: tuple[str, ...] = ("low", "high", "freq_merge", "guided", "sddr_one_stage", "sddr_two_stage")
#: Display names of :data:`METHODS` (the HTML report's captions and table rows).
METHOD_LABELS: dict[str, str] = {
    "low": "low",
    "high": "high",
    "freq_merge": "freq merge",
    "guided": "guided filter",
    "sddr_one_stage": "SDDR one-stage",
    "sddr_two_stage": "SDDR two-stage",
}
