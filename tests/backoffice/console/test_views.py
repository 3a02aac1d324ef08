"""Where a sign-in may send a person afterwards: a path of this site, never elsewhere."""

from __future__ import annotations

import pytest

from backoffice.console.views import local_path


@pytest.mark.parametrize("target", ["/positions", "/positions?status=POSITION_STATUS_OPEN&page_token=abc", "/"])
def test_a_path_of_this_site_is_kept(target: str) -> None:
    assert local_path(target) == target


@pytest.mark.parametrize(
    "target",
    ["//evil.example", "/\\evil.example", "/\t/evil.example", "/\n/evil.example", "https://evil.example/", "", "x"],
)
def test_anywhere_else_is_the_home_page(target: str) -> None:
    assert local_path(target) == "/"
