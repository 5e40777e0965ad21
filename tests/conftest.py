"""Test-wide settings."""

from __future__ import annotations

import os

from hypothesis import settings

# Bounded, deadline-free runs on slow 2-core CI machines.
settings.register_profile("ci", deadline=None, max_examples=100,
                          database=None)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
