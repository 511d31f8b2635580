import pytest

from .training.conftest import PATTERN


@pytest.fixture
def toy_corpus(tmp_path):
    """A small learnable text file (a repeated sentence): loss must fall fast on it."""
    path = tmp_path / "toy.txt"
    path.write_text(PATTERN * 120)
    return path
