"""Request bodies, built in one place: a test spells out only the fields it is about."""

from __future__ import annotations


def entry_body(data: object, **fields: object) -> dict[str, object]:
    """The body of a write (POST /api/auth-cache/{key}): `data` is stored as the entry's
    token_data, a bearer credential unless `credential_type` is given; other fields as given."""
    return {"token_data": data, "credential_type": "bearer", **fields}
