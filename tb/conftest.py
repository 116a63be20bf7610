"""Fixtures the chip tests share: the shipped model and its quantised form (loaded once per
test module, as each module did itself)."""

import pytest

from sw.frontend import load_model
from sw.golden import quantized

MODEL = "models/kjv-280k"


@pytest.fixture(scope="module")
def model():
    """``models/kjv-280k`` as loaded by the frontend."""
    return load_model(MODEL)


@pytest.fixture(scope="module")
def qm(model):
    """The quantised model the golden decoder runs."""
    return quantized(model)
