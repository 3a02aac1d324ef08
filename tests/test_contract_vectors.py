"""The repository's copy of CONTRACT.md's vectors is the shared one, byte for byte."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_VECTORS, VECTORS_COPY


@pytest.mark.skipif(not SHARED_VECTORS.exists(), reason="../shared is not beside this clone")
def test_vectors_copy_matches_shared() -> None:
    assert VECTORS_COPY.read_bytes() == SHARED_VECTORS.read_bytes()
