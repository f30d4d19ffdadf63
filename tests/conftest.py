"""Shared fixtures: tiny random models (unit tests) and one load of the embedded model (integration)."""

import pytest
import torch


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
