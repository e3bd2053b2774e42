import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session", autouse=True)
def _private_softlab_home(tmp_path_factory):
    """Tests never read or write the user's ``$SOFTLAB_HOME`` (cached teachers, label stores, batch-size
    choices): the whole session uses one temporary home (the one the notebook and browser tests share)."""
    from browser import shared_softlab_home

    saved = os.environ.get("SOFTLAB_HOME")
    os.environ["SOFTLAB_HOME"] = str(shared_softlab_home(tmp_path_factory))
    yield
    if saved is None:
        os.environ.pop("SOFTLAB_HOME", None)
    else:
        os.environ["SOFTLAB_HOME"] = saved
