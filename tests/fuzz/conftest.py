"""The fuzz suite's hypothesis profiles and its expensive fixtures (see docs/testing.md).

    ci    the default: derandomized (the same examples on every run, so CI is reproducible), few examples, no
          example database; the whole of tests/fuzz runs in well under a minute on two cores
    long  many random examples, failures kept in .hypothesis/ and replayed first on the next run:
          `make fuzz`, or HYPOTHESIS_PROFILE=long python -m pytest tests/fuzz

pytest's `--hypothesis-profile NAME` wins over HYPOTHESIS_PROFILE. Hypothesis does not reset function-scoped
fixtures between the examples of one test, so what an example writes goes to a directory of its own
(`tmp_path_factory.mktemp`), and the models and the server are module- or session-scoped.
"""

from __future__ import annotations

import os

import pytest
from fuzz.mutate import Quiet
from hypothesis import HealthCheck, settings

SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
"""An example writes a dataset and runs real entry points; the huge-string strategies draw big examples."""

settings.register_profile("ci", max_examples=25, derandomize=True, database=None, deadline=None,
                          suppress_health_check=SLOW, print_blob=True)
settings.register_profile("long", max_examples=400, deadline=None, suppress_health_check=SLOW, print_blob=True)


def pytest_configure(config):
    settings.load_profile(config.getoption("hypothesis_profile", None) or os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def llava(tiny_llava) -> Quiet:
    """The tiny LLaVA (a CLIP-style processor that scales the short side up to 32) behind a Predictor."""
    from vlmtune.infer import Predictor
    from vlmtune.models import FAMILIES

    return Quiet("tiny llava Predictor", Predictor(loaded=tiny_llava, family=FAMILIES["llava"], max_length=256))
