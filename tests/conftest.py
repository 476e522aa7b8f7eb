"""Test-suite settings. Hypothesis runs derandomized by default, so a CI run draws the same examples every
time (a gate must not flake on a newly drawn corner case); HYPOTHESIS_PROFILE=explore draws fresh ones."""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
