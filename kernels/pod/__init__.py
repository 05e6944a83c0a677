"""Our POD-Attention kernel family in Triton: device code (kernel.py), launch planning with every
knob of the paper (plan.py) and the host-side launcher (launch.py)."""
from .plan import LaunchPlan, PodConfig, make_plan  # noqa: F401
