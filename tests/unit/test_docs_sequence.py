"""docs/architecture.md shows the message sequence of a relayed session as recorded on a
deployed star6 (tests/data/events/star6-relayed.jsonl, kept by
tests/integration/test_control_star6.py with QKDTWIN_UPDATE_DOCS=1): the table in the doc
is the one `qkdtwin timeline` makes of that recording, so the two never drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdtwin.events import build_timeline, load_events
from qkdtwin.timeline import render_markdown

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests" / "data" / "events" / "star6-relayed.jsonl"


def table_of(recording: Path, tmp_path: Path) -> list[str]:
    md = render_markdown(build_timeline(load_events(recording)), tmp_path / "t.md")
    return [line for line in md.read_text().splitlines() if line.startswith("|")]


def test_the_recording_is_one_relayed_session_from_request_to_end():
    events = load_events(RECORDING)
    assert len({e.session_id for e in events}) == 1
    kinds = [(e.lane, e.kind) for e in events]
    for step in [("admission", "path_assigned"), ("km0", "relay_forward"),
                 ("km3", "relay_receive"), ("km2", "relay_ack"),
                 ("admission", "session_terminated")]:
        assert step in kinds, step
    assert next(e for e in events if e.kind == "path_assigned").payload["path"] == [
        "km2", "km0", "km3"]


def test_architecture_doc_shows_the_recorded_sequence(tmp_path):
    rows = table_of(RECORDING, tmp_path)
    doc = (ROOT / "docs" / "architecture.md").read_text().splitlines()
    # the header line may be shared with other tables: find the one followed by this one
    starts = [i for i, line in enumerate(doc) if line == rows[0]]
    assert any(doc[i:i + len(rows)] == rows for i in starts), (
        "docs/architecture.md's relayed-session table differs from the recording; regenerate"
        " it: qkdtwin timeline - --events tests/data/events/star6-relayed.jsonl --out DIR"
        " --no-telemetry (DIR/timeline.md)")
