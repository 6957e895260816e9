"""The chart's README documents every value in values.yaml with its true default, and names
no value the chart does not have: what an operator reads there is what they can set.

No helm needed: these read values.yaml, values.schema.json and the README's value tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "keychain"
# The default cell of a value the schema allows but values.yaml leaves out.
UNSET = "unset"
ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| (?P<default>[^|]+?) \| (?P<what>.+) \|$")


def leaf_values(node: object, prefix: str = "") -> dict[str, object]:
    """Every leaf key path of values.yaml and its default: a scalar, a list or an empty map."""
    if isinstance(node, dict) and node:
        leaves: dict[str, object] = {}
        for key, value in node.items():
            leaves.update(leaf_values(value, f"{prefix}{key}."))
        return leaves
    return {prefix.rstrip("."): node}


def schema_paths(schema: dict, prefix: str = "") -> set[str]:
    """Every key path values.schema.json declares, optional ones included."""
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        paths |= {prefix + key} | schema_paths(sub, f"{prefix}{key}.")
    return paths


def documented() -> dict[str, str]:
    """Value name -> its default cell, from the tables under the README's "## Values"."""
    readme = (CHART / "README.md").read_text()
    rows: dict[str, str] = {}
    for line in readme[readme.index("\n## Values\n") :].splitlines():
        if not line.startswith("| `"):
            continue
        row = ROW.match(line)
        assert row, f"not a | `value` | default | what it does | row: {line}"
        assert row["name"] not in rows, f"{row['name']} is documented twice"
        rows[row["name"]] = row["default"]
    return rows


def defaults() -> dict[str, object]:
    return leaf_values(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_readme_documents_every_value():
    missing = sorted(set(defaults()) - set(documented()))
    assert not missing, f"values.yaml has values the README does not document: {missing}"


def test_readme_names_only_values_the_chart_has():
    known = set(defaults()) | schema_paths(json.loads((CHART / "values.schema.json").read_text()))
    unknown = sorted(set(documented()) - known)
    assert not unknown, f"the README documents values the chart does not have: {unknown}"


def test_readme_gives_the_true_defaults():
    values = defaults()
    for name, cell in documented().items():
        if name not in values:
            assert cell == UNSET, (
                f"{name} is not in values.yaml, so its default cell says {UNSET!r}, not {cell}"
            )
            continue
        assert cell.startswith("`") and cell.endswith("`"), (
            f"{name}: the default is not code: {cell}"
        )
        assert yaml.safe_load(cell[1:-1]) == values[name], (
            f"{name}: README {cell}, values.yaml {values[name]!r}"
        )
