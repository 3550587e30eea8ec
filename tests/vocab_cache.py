"""A pytest fixture for tests that derive vocabularies with tokensets (palimix.vocab):
the derived SentencePiece models go to a temporary cache, not the user's ~/.cache.

Use it in a module with `from tests.vocab_cache import vocab_cache_dir` and
`pytestmark = pytest.mark.usefixtures("vocab_cache_dir")`."""

import os

import pytest

from palimix import vocab


@pytest.fixture(scope="module")
def vocab_cache_dir(tmp_path_factory):
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    vocab._with_tokensets.cache_clear()  # Paths cached under the old folder.
    yield os.environ["XDG_CACHE_HOME"]
    vocab._with_tokensets.cache_clear()
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old
