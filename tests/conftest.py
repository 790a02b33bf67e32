"""Shared test settings: fixed seeds, the device under test, opt-in slow grids.

The device comes from PYZSL_TEST_DEVICE (default "cpu"); CUDA tests skip with a
reason where no GPU is visible, so one suite serves CPU and CUDA.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(os.environ.get("PYZSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run the big grids too")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow grid: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("PYZSL_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("PYZSL_TEST_DEVICE=cuda but torch sees no CUDA device")
    return torch.device(name)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set PYZSL_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """torch on one thread for the test: its tiny T×T and T×P products would otherwise wake a
    second OpenMP thread, which costs tens of milliseconds a call on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
