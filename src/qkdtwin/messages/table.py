"""The docs' table of MQTT messages, rendered from the message classes (docs/architecture.md,
"MQTT messages"; tests/unit/test_messages_doc.py keeps the two equal)."""

from __future__ import annotations

from qkdtwin.messages import catalog as c
from qkdtwin.messages.base import Message

# Requests next to their replies, in the order a session meets them.
ORDER: tuple[type[Message], ...] = (
    c.Authenticate, c.AuthResult, c.Revocation, c.ConfigRequest, c.KeyRequest, c.CloseRequest,
    c.DeletionConfirm, c.ConfigResync, c.AdmissionUp, c.SessionConfig, c.SessionDelete,
    c.ProfileRequest,
    c.ProfileReply, c.LookupSae, c.SaeReply, c.PathRequest, c.PathReply, c.Release, c.Released,
    c.LinkMetrics, c.TopologyViewRequest, c.TopologyView, c.ModuleTelemetry, c.KmTelemetry,
    c.LinkAlarm, c.Topology,
    c.Event, c.EveCommand, c.UserList, c.UserAdd, c.UserDisable, c.UserEnable, c.UsersReply,
    c.UserReply, c.OkReply, c.ErrorReply)

HEADER = "| topic | type | fields |\n|---|---|---|"


def _field(f) -> str:
    note = f.metadata.get("doc", "")
    if not note:
        return f"`{f.name}`"
    return f"`{f.name}` {note}" if note[0] in "{[" else f"`{f.name}` ({note})"


def row(cls: type[Message]) -> str:
    fields = ", ".join(_field(f) for f in cls.wire_fields()) or "(no fields)"
    note = f" — {cls.NOTE}" if cls.NOTE else ""
    return f"| {cls.TOPIC} | `{cls.TYPE}`{cls.LABEL} | {fields}{note} |"


def render_table() -> str:
    """The Markdown table, one row per message class in catalogue order."""
    return "\n".join([HEADER, *(row(m) for m in ORDER)])
