"""The message table of docs/architecture.md is the one rendered from qkdtwin.messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdtwin import messages
from qkdtwin.messages.table import ORDER, render_table

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_every_message_class_is_in_the_table():
    assert set(ORDER) == set(messages.ALL) and len(ORDER) == len(messages.ALL)


def test_doc_table_matches_the_message_definitions():
    text = DOC.read_text()
    start = text.index("| topic | type | fields |")
    end = text.index("\n\n", start)
    assert text[start:end] == render_table(), (
        "docs/architecture.md 'MQTT messages' differs from qkdtwin.messages; paste the "
        "output of `python -c 'from qkdtwin.messages.table import render_table as r; "
        "print(r())'` into it")
