"""What a principal may do to an entry: the rules of least privilege, in one place.

- An admin may do anything.
- An execution token reaches execution-scoped entries of its own execution and of its
  sub-executions (`execution_id` or `parent_execution_id` matches), and global or session
  entries only for credentials its grants list.
- A configured token with limits reaches only the credentials its grants list, in any scope.
- A configured token without limits reaches every entry.
- Global and session entries are shared: replacing or deleting a live one that another
  principal wrote needs an explicit write grant for its credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.auth import Principal
from app.errors import AccessDenied

Entry = Mapping[str, Any]


def _own_execution(principal: Principal, entry: Entry) -> bool:
    return entry["scope_type"] == "execution" and principal.execution_id in (
        entry["execution_id"],
        entry["parent_execution_id"],
    )


def _may(principal: Principal, entry: Entry, write: bool) -> bool:
    if principal.role == "admin":
        return True
    if principal.execution_id is not None and entry["scope_type"] == "execution":
        return _own_execution(principal, entry)
    if principal.grants is None:
        return principal.execution_id is None
    name = entry["credential_name"]
    return principal.grants.may_write(name) if write else principal.grants.may_read(name)


def may_read(principal: Principal, entry: Entry) -> bool:
    return _may(principal, entry, write=False)


def check_read(principal: Principal, entry: Entry) -> None:
    if not may_read(principal, entry):
        raise AccessDenied(_denial(principal, entry, "read"))


def check_write(principal: Principal, entry: Entry) -> None:
    """The entry as it is about to be written."""
    if not _may(principal, entry, write=True):
        raise AccessDenied(_denial(principal, entry, "write"))


def check_replace(principal: Principal, existing: Entry) -> None:
    """A live entry already under the key, about to be replaced or deleted."""
    check_write(principal, existing)
    if principal.role == "admin" or existing["scope_type"] == "execution":
        return
    if existing["written_by"] == principal.name:
        return
    if principal.grants is not None and principal.grants.may_write(existing["credential_name"]):
        return
    raise AccessDenied(
        f"token '{principal.name}' may not replace or delete the live {existing['scope_type']} entry for "
        f"credential '{existing['credential_name']}': another principal wrote it, and the token has no "
        "write grant for that credential"
    )


def _denial(principal: Principal, entry: Entry, verb: str) -> str:
    who = f"token '{principal.name}'"
    if principal.execution_id is not None and entry["scope_type"] == "execution":
        return (
            f"{who} is bound to execution {principal.execution_id}; it may not {verb} entries of "
            f"execution {entry['execution_id']}"
        )
    scope = entry["scope_type"]
    return (
        f"{who} may not {verb} {scope} entries for credential '{entry['credential_name']}': "
        f"it is not in the token's {verb} grants"
    )
