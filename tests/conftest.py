"""Shared fixtures: tiny random models (unit tests) and one load of the embedded model (integration)."""

import os
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("NRN_TYPECHECK") == "1":  # every nrnlib function and dataclass checked at run time
    from jaxtyping import install_import_hook

    sys.path.insert(0, str(Path(__file__).parent))
    install_import_hook("nrnlib", "typechecker.typecheck")


def pytest_configure(config):
    config.addinivalue_line("markers", "wrong_type: passes a deliberately wrong type to check nrnlib's own error "
                                       "(run without NRN_TYPECHECK: the runtime checker would answer first)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NRN_TYPECHECK") == "1":
        skip = pytest.mark.skip(reason="wrong-type test: run without NRN_TYPECHECK (make test runs it separately)")
        for item in items:
            if "wrong_type" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama():
    from nrnlib.models import load_model

    return load_model("tiny-random-llama", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_gpt2():
    from nrnlib.models import load_model

    return load_model("tiny-random-gpt2", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, loaded once per test session."""
    from nrnlib.models import load_model

    return load_model(device="cpu", dtype=torch.float32)
