"""One cache-key format for every writer: fetch_secret, OAuth2 tokens and CredentialCache."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import workerlib
from workerlib import compat
from workerlib.errors import InvalidKey
from workerlib.keys import cache_key


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("projects/1/secrets/db/versions/3", 555), "projects/1/secrets/db/versions/3:555"),
        (("svc", 0), "svc:0"),  # execution 0 is an execution, not "no execution"
        (("svc", 7, "bearer"), "svc:7"),  # an execution's entry ignores the token type
        (("crm", None, "oauth2"), "crm:global:oauth2"),
        (("svc",), "svc:global"),
        (("svc", None, ""), "svc:global"),
        (("svc", "42"), "svc:42"),  # an id rendered by a template
        (("svc", -1), "svc:-1"),
        (("a:b", 3), "a:b:3"),
        (("globals:a",), "globals:a:global"),  # only a whole 'global' segment is refused
    ],
)
def test_the_original_formats(args: tuple, key: str) -> None:
    assert cache_key(*args) == key


@pytest.mark.parametrize(
    "args",
    [
        ("a:global", 7),  # would be ("a", token_type="7")
        ("a:global",),  # would be ("a", token_type="global")
        ("a:global:x", None, "t"),
        ("global",),
        ("a", None, "oauth2:digest"),  # would be ("a:global:oauth2", ...) and the OAuth2 key space
        ("a", 7, "b:c"),
        ("a", "global"),  # would be ("a",)
        ("a", "7:x"),
        ("a", True),
    ],
)
def test_parts_that_would_spell_another_key_are_refused(args: tuple) -> None:
    with pytest.raises(InvalidKey, match=r"ambiguous|not a whole number") as caught:
        cache_key(*args)
    assert isinstance(caught.value, ValueError)


def test_the_format_is_built_in_one_place_only() -> None:
    assert compat.cache_key is cache_key  # the old import path still works
    package = Path(workerlib.__file__).parent
    builders = sorted(p.name for p in package.glob("*.py") if _formats_a_global_key(p.read_text()))
    assert builders == ["keys.py"]


def _formats_a_global_key(source: str) -> bool:
    """An f-string with ':global' in it (docstrings that mention the format do not count)."""
    return any(
        isinstance(node, ast.JoinedStr)
        and any(
            isinstance(part, ast.Constant) and ":global" in str(part.value) for part in node.values
        )
        for node in ast.walk(ast.parse(source))
    )
