"""Shared fixtures. Tests run on the CPU with two threads; a CUDA run is added where present."""
import pytest
import torch

import atom
from atom.runtime import configure

configure(threads=2)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def digits():
    return atom.load_digits()


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
