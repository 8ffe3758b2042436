"""Fixtures of the trainables tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, then as it was: tiny models only get contention and run-to-run variance
    from more threads on a busy 2-core box (center-loss convs ran 20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
