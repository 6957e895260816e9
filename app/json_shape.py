"""Caps on the shape of a JSON body, checked on its bytes before decoding expands them.

A 1 MiB body of `[{},{},...]` decodes into ~27 MB of Python objects, and deep nesting makes
the decoder recurse; counting the structure on the raw bytes costs a few C-level scans.
"""

from __future__ import annotations

import re

# String contents cannot open or close anything: blank them out before counting.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def shape_problem(body: bytes, max_depth: int, max_items: int) -> str | None:
    """Why the body's token_data is too deep or too big, or None.

    Counted over the whole body, whose top level holds token_data: its depth is one less,
    and its items (members and elements) are at most the body's.
    """
    skeleton = _STRING.sub(b'""', body)
    items = skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{")
    if items > max_items:
        return (
            f"the JSON body holds more than {max_items} members and elements "
            "(KEYCHAIN_MAX_TOKEN_DATA_ITEMS)"
        )
    depth = deepest = 0
    for bracket in _BRACKET.findall(skeleton):  # at most ~max_items of them by now
        depth += 1 if bracket in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    if deepest - 1 > max_depth:
        return (
            f"token_data nests {deepest - 1} levels deep; the limit is {max_depth} "
            "(KEYCHAIN_MAX_TOKEN_DATA_DEPTH)"
        )
    return None
