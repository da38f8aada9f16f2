"""The format's contract lives in the repository (docs/spa-format.md) and names what the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from spa_export.spa.model import FIELD_SUFFIX
from spa_export.spa.projections import PARTS
from spa_export.spa.reader import SPA_FORMAT, SPA_VERSION

SPEC = Path(__file__).resolve().parents[2] / "docs" / "spa-format.md"


def test_the_spec_is_in_the_repository_with_its_version_and_revisions() -> None:
    text = SPEC.read_text()
    assert text.startswith(f"# The SPA file, version {SPA_VERSION}\n")
    assert f"| `spa.format` | yes | `{SPA_FORMAT}` |" in text
    assert f"| `spa.version` | yes | `{SPA_VERSION}` |" in text
    assert "## Revisions of this document" in text


def test_every_tensor_field_the_reader_knows_is_in_the_spec_and_no_other() -> None:
    text = SPEC.read_text()
    table = text[text.index("| field | shape | dtype | meaning |"):text.index("`out` and `in` are")]
    fields = set(re.findall(r"^\| `L\.([a-z_.]+)` \|", table, re.MULTILINE))
    assert fields == set(FIELD_SUFFIX.values())


def test_the_attention_projection_names_are_specified() -> None:
    text = SPEC.read_text()
    for part in PARTS:
        assert f"| `M.{part}` |" in text
