"""workerlib's surface is the one written down at the top of workerlib/__init__.py: one way in
for each job. A name exported without being listed there, or listed without being exported,
fails here."""

from __future__ import annotations

import re

import workerlib


def test_the_exports_are_the_documented_ones() -> None:
    documented = re.findall(r"^    (\w+) ", workerlib.__doc__ or "", re.M)
    assert sorted(documented) == sorted(workerlib.__all__)
    for name in workerlib.__all__:
        assert getattr(workerlib, name) is not None


def test_every_exported_call_says_what_it_raises() -> None:
    calls = [workerlib.fetch_secret, workerlib.resolve_auth, workerlib.warm_execution]
    calls += [
        getattr(workerlib.KeychainClient, name)
        for name in dir(workerlib.KeychainClient)
        if not name.startswith("_")
    ]
    calls += [
        workerlib.CredentialCache.get_cached,
        workerlib.CredentialCache.set_cached,
        workerlib.CredentialCache.delete_cached,
    ]
    silent = [c.__qualname__ for c in calls if "raise" not in (c.__doc__ or "").lower()]
    assert silent == []
