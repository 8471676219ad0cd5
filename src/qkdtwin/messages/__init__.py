"""Typed control-plane messages: one dataclass per payload ``type``, with a schema version
and a decoder that refuses a malformed payload with a reason (:class:`BadMessage`).

    msg = decode(payload, SessionConfig)     # bytes | str | dict -> SessionConfig
    msg = decode_any(payload, INBOUND)       # the class named by the payload's "type"
    bus.publish(topic, msg.to_payload())

The docs' message table (docs/architecture.md, "MQTT messages") is rendered from these
classes by :func:`qkdtwin.messages.table.render_table` and checked by a unit test.
"""

from __future__ import annotations

from collections.abc import Iterable

from qkdtwin.messages.base import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    SUPPORTED_VERSIONS,
    BadMessage,
    Message,
    build,
    decode,
    parse_json,
)
from qkdtwin.messages.catalog import (
    AdmissionUp,
    Authenticate,
    AuthResult,
    CloseRequest,
    ConfigRequest,
    ConfigResync,
    DeletionConfirm,
    ErrorReply,
    EveCommand,
    Event,
    KeyRequest,
    KmTelemetry,
    LinkAlarm,
    LinkMetrics,
    LookupSae,
    ModuleTelemetry,
    OkReply,
    PathReply,
    PathRequest,
    ProfileReply,
    ProfileRequest,
    Release,
    Released,
    Revocation,
    SaeReply,
    SessionConfig,
    SessionDelete,
    Telemetry,
    Topology,
    TopologyView,
    TopologyViewRequest,
    UserAdd,
    UserDisable,
    UserEnable,
    UserList,
    UserReply,
    UsersReply,
    decode_telemetry,
)

# What arrives on each inbound topic (the replies are decoded with their class by the asker).
ADMISSION_IN = (ConfigRequest, KeyRequest, CloseRequest, DeletionConfirm, ConfigResync)
ACCESS_IN = (Authenticate, LookupSae, ProfileRequest)
ACCESS_ADMIN = (UserList, UserAdd, UserDisable, UserEnable)
ROUTING_IN = (PathRequest, Release, LinkMetrics, TopologyViewRequest)
REPLIES = (AuthResult, ProfileReply, SaeReply, UsersReply, UserReply, PathReply, Released,
           TopologyView, OkReply, ErrorReply)
ONE_WAY = (SessionConfig, SessionDelete, ModuleTelemetry, KmTelemetry, LinkAlarm, Topology,
           Event, EveCommand, Revocation, AdmissionUp)
ALL: tuple[type[Message], ...] = (*ADMISSION_IN, *ACCESS_IN, *ACCESS_ADMIN, *ROUTING_IN,
                                  *ONE_WAY, *REPLIES)


def decode_any(payload: bytes | str | dict, among: Iterable[type[Message]]) -> Message:
    """The payload as the class of ``among`` its ``type`` names; BadMessage otherwise."""
    obj = parse_json(payload)
    kind = obj.get("type")
    for cls in among:
        if cls.TYPE == kind:
            return build(cls, obj)
    raise BadMessage(f"unknown type {kind!r}", kind if isinstance(kind, str) else None)


__all__ = [
    "ACCESS_ADMIN", "ACCESS_IN", "ADMISSION_IN", "ALL", "AdmissionUp", "AuthResult",
    "Authenticate",
    "BadMessage", "CloseRequest", "ConfigRequest", "ConfigResync", "DeletionConfirm",
    "ErrorReply", "EveCommand", "Event", "KeyRequest", "KmTelemetry", "LinkAlarm",
    "LinkMetrics", "LookupSae", "MAX_PAYLOAD_BYTES", "Message", "ModuleTelemetry", "ONE_WAY",
    "OkReply", "PathReply", "PathRequest", "ProfileReply", "ProfileRequest", "REPLIES",
    "ROUTING_IN", "Release", "Released", "Revocation", "SCHEMA_VERSION", "SUPPORTED_VERSIONS",
    "SaeReply",
    "SessionConfig", "SessionDelete", "Telemetry", "Topology", "TopologyView",
    "TopologyViewRequest", "UserAdd", "UserDisable", "UserEnable", "UserList", "UserReply",
    "UsersReply", "build", "decode", "decode_any", "decode_telemetry", "parse_json",
]
