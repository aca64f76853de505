"""The smoke recipe as the end-to-end tests run it; tests/conftest.py makes its one-process run once."""

from __future__ import annotations

from pathlib import Path

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
# 16 identities in 8 units of 2: enough units for two workers, three array tasks and kills mid-run.
OVERRIDES = ["identities.count=16", "output.identities_per_unit=2"]
SETS = [arg for item in OVERRIDES for arg in ("--set", item)]  # the same, as CLI arguments
# 8 identities in 2 units of 4: tests/core/conftest.py's ``small_units``.
SMALL = ["identities.count=8", "output.identities_per_unit=4"]
