"""See and decide: measure a model (``profile``) and choose how to run it (``advise``).

    prof = profile_model("models/fraud")
    advice = advise(Workload(requests_per_day=5e6, peak_rps=300, p99_ms=100, freshness_s=3600,
                             inputs_at_request_time="no", price_per_hour=1.20, spot_discount=0.7), prof)
    advice.pattern, advice.reasons, advice.costs, advice.what_would_change, advice.migration

The CLI (``inferlane profile``, ``inferlane advise``) and the dashboard are thin layers over these.
"""

from inferlane.advise.advisor import Advice, advise
from inferlane.advise.costs import PatternCost, cost_per_million, pattern_costs
from inferlane.advise.profile import BatchingAdvice, Profile, ProfilePoint, load_profile, profile_model
from inferlane.advise.workload import Pattern, Workload

__all__ = [
    "Advice",
    "BatchingAdvice",
    "Pattern",
    "PatternCost",
    "Profile",
    "ProfilePoint",
    "Workload",
    "advise",
    "cost_per_million",
    "load_profile",
    "pattern_costs",
    "profile_model",
]
