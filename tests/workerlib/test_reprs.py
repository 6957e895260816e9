"""A payload never shows in a repr: a worker that logs what it got, or fails an assert on it,
does not print the secret. The metadata still shows, as before."""

from __future__ import annotations

import logging
import pprint

from rich.pretty import pretty_repr

from workerlib import KeychainClient
from workerlib.models import EntryPut

SECRET = "sk-repr-secret-5f0c2a"
BODY = {"api_key": SECRET}


async def test_an_entry_shows_its_metadata_and_hides_its_data(
    keychain: KeychainClient, caplog
) -> None:
    written = await keychain.put(
        "openai:global", BODY, credential_type="bearer", scope_type="global"
    )
    entry = await keychain.get("openai:global")
    assert entry is not None and entry.data == BODY  # the value itself is all there

    for shown in (
        repr(entry),
        str(entry),
        f"{entry}",
        pprint.pformat(entry),
        pretty_repr(entry),
        repr([entry]),
    ):
        assert SECRET not in shown
        assert "data=<hidden>" in shown
        assert "cache_key='openai:global'" in shown and "access_count=1" in shown
    with caplog.at_level(logging.INFO):
        logging.getLogger("a.worker").info("got %s", entry)
    assert SECRET not in caplog.text
    try:
        raise RuntimeError(f"could not use {entry!r}")
    except RuntimeError as exc:
        assert SECRET not in str(exc)

    # The metadata POST answers holds no payload: its repr is msgspec's own, every field shown.
    assert repr(written).startswith(
        "EntryMeta(cache_key='openai:global', credential_name='openai', "
    )
    assert "<hidden>" not in repr(written)


def test_a_body_to_write_hides_its_token_data() -> None:
    body = EntryPut(token_data=BODY, credential_type="bearer")
    assert SECRET not in repr(body) and SECRET not in pretty_repr(body)
    assert repr(body).startswith("EntryPut(token_data=<hidden>, credential_type='bearer', ")
