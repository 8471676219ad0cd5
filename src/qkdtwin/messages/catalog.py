"""Every control-plane payload on the MQTT bus (topics under ``qkd/v1/``, see qkdtwin.bus).

Field names are the payload keys. A field without a default is required. ``omit_none``
fields are left out of the payload while they are None (they are optional on the wire).
The QKD modules' classical channel (qkd_module.framing: hello, assign, sift, ...) is a TCP
protocol between two modules, not part of this catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qkdtwin.messages.base import Message, decode, doc, parse_json

OMIT = {"omit_none": True}


def opt(text: str = "") -> Any:
    """An optional field, left out of the payload while None."""
    return field(default=None, metadata={**OMIT, "doc": text})


def nullable(text: str) -> Any:
    """An optional field, sent as null while None."""
    return field(default=None, metadata=doc(text))


def req(text: str) -> Any:
    """A required field with its note for the docs."""
    return field(metadata=doc(text))


# --- Key Manager → Admission Control (admission/in/<km>: only that KM writes it) ---

@dataclass(kw_only=True)
class ConfigRequest(Message):
    TYPE = "config_request"
    TOPIC = "`admission/in/<km>`"
    NOTE = ("With `api: 014` admission does not wait for the slave to register: the "
            "master's request configures the whole path.")
    km: str
    session_id: str
    # not required here: admission answers a request without them with a session_delete
    user: str | None = None
    sae_id: str | None = None
    peer_sae_id: str | None = None
    api: str = field(default="004", metadata=doc("`014`/`004`"))
    qos: dict[str, Any] | None = field(default=None, metadata=doc(
        "{`key_chunk_size`, `max_bps`, `min_bps`, `jitter`, `priority`, `timeout` (ms), "
        "`ttl` (s)}"))


@dataclass(kw_only=True)
class KeyRequest(Message):
    TYPE = "key_request"
    TOPIC = "`admission/in/<km>`"
    NOTE = "resets admission's session timer"
    km: str
    session_id: str
    bits: int = 0


@dataclass(kw_only=True)
class CloseRequest(Message):
    TYPE = "close_request"
    TOPIC = "`admission/in/<km>`"
    km: str
    session_id: str
    reason: str = "closed"


@dataclass(kw_only=True)
class DeletionConfirm(Message):
    TYPE = "deletion_confirm"
    TOPIC = "`admission/in/<km>`"
    km: str
    session_id: str


@dataclass(kw_only=True)
class ConfigResync(Message):
    TYPE = "config_resync"
    TOPIC = "`admission/in/<km>`"
    NOTE = ("the KM has no forwarding entry for a session a neighbour relays on (its "
            "`session_config` was published while it was down or not yet subscribed), or "
            "it (re)connected to the broker and checks each live session it holds; "
            "admission re-sends that KM's `session_config` (`update: false`) if the session "
            "is active and the KM on its path, `session_delete` if the session ended or "
            "was re-routed away from the KM (event `deletion_resent`), and ignores it while "
            "the session is still being set up (event `config_resync_ignored`)")
    km: str
    session_id: str


# --- Admission Control → one Key Manager (km/<km>/config, km/<km>/delete) -----------------

@dataclass(kw_only=True)
class SessionConfig(Message):
    TYPE = "session_config"
    TOPIC = "`km/<km>/config`"
    session_id: str
    role: str = req("`source`/`transit`/`destination`")
    prev_hop: str | None = req("KM name or null")
    next_hop: str | None = req("KM name or null")
    priority: int = req("0–9")
    bucket: dict[str, Any] = req("{`size_bits`, `rate_bps`}")
    timeout_s: float
    local_sae_id: str | None = req("null on a transit")
    peer_sae_id: str | None = req("null on a transit")
    peer_km: str | None = req("the KM at the other end, null on a transit")
    user: str | None
    update: bool = req("true when the control plane changes the forwarding entry of a live "
                       "session, e.g. on re-routing")
    api: str | None = None
    qos: dict[str, Any] | None = None


@dataclass(kw_only=True)
class SessionDelete(Message):
    TYPE = "session_delete"
    TOPIC = "`km/<km>/delete`"
    session_id: str
    reason: str = req("`closed`, `timeout`, `rejected: ...`, `peer closed`, `rerouted`, "
                      "`link alarm: no path avoiding <link>`")
    counter_qos: dict[str, Any] | None = opt("ETSI 004 status 7 counter-proposal")


# --- Key Manager ↔ Access Control (access/in, request/reply) ------------------------------

@dataclass(kw_only=True)
class Authenticate(Message):
    TYPE = "authenticate"
    TOPIC = "`access/in` (req/rep)"
    km: str | None = None
    sae_id: str
    cert: dict[str, Any] = req("{`cn`, `o`, `ou`, `fingerprint`}")
    peer_sae_id: str | None = None
    session_id: str | None = None


@dataclass(kw_only=True)
class AuthResult(Message):
    TYPE = "auth_result"
    TOPIC = "reply"
    ok: bool
    sae_id: str | None = None
    user: str | None = opt()
    reason: str | None = opt("when refused")
    sla: dict[str, Any] | None = opt("when accepted")
    km: str | None = opt("when accepted")


@dataclass(kw_only=True)
class AdmissionUp(Message):
    TYPE = "admission_up"
    TOPIC = "`admission/up` (retained)"
    NOTE = ("Admission Control → every KM, published with a new `epoch` on each of its "
            "broker (re)connections: a KM that sees the epoch change checks each live session "
            "it holds (`config_resync`), since checks sent while admission was away were lost")
    epoch: str


@dataclass(kw_only=True)
class Revocation(Message):
    TYPE = "revocation"
    TOPIC = "`access/revoked/<user>` (retained)"
    NOTE = ("Access Control → every KM when a user is disabled: each KM ends the live "
            "sessions of the user and its applications and forgets their authentications; "
            "an empty retained payload clears it (user enabled)")
    user: str
    sae_ids: list[str] = field(default_factory=list)
    reason: str = "user disabled"


# --- Admission Control ↔ Access Control (access/in, request/reply) ------------------------

@dataclass(kw_only=True)
class ProfileRequest(Message):
    TYPE = "profile"
    TOPIC = "`access/in` (req/rep)"
    user: str


@dataclass(kw_only=True)
class ProfileReply(Message):
    TYPE = "profile"
    TOPIC = "reply"
    ok: bool
    user: str | None = opt()
    status: str | None = opt("`active`/`disabled`")
    sla: dict[str, Any] | None = opt()
    applications: list[dict[str, Any]] | None = opt()
    reason: str | None = opt("when refused")


@dataclass(kw_only=True)
class LookupSae(Message):
    TYPE = "lookup_sae"
    TOPIC = "`access/in` (req/rep)"
    sae_id: str


@dataclass(kw_only=True)
class SaeReply(Message):
    TYPE = "sae"
    TOPIC = "reply"
    ok: bool
    sae_id: str | None = opt()
    user: str | None = opt()
    km: str | None = opt()
    status: str | None = opt()
    reason: str | None = opt("when refused")


# --- operator → Access Control (access/admin, request/reply; only `host` may write) -------

@dataclass(kw_only=True)
class UserList(Message):
    TYPE = "user_list"
    TOPIC = "`access/admin` (req/rep)"


@dataclass(kw_only=True)
class UserAdd(Message):
    TYPE = "user_add"
    TOPIC = "`access/admin` (req/rep)"
    user: dict[str, Any] = req("the user record of the users file")


@dataclass(kw_only=True)
class UserDisable(Message):
    TYPE = "user_disable"
    TOPIC = "`access/admin` (req/rep)"
    name: str


@dataclass(kw_only=True)
class UserEnable(Message):
    TYPE = "user_enable"
    TOPIC = "`access/admin` (req/rep)"
    name: str


@dataclass(kw_only=True)
class UsersReply(Message):
    TYPE = "users"
    TOPIC = "reply"
    ok: bool
    users: list[dict[str, Any]]


@dataclass(kw_only=True)
class UserReply(Message):
    TYPE = "user"
    TOPIC = "reply"
    ok: bool
    user: dict[str, Any] | None = opt()
    reason: str | None = opt("when refused")


# --- Admission / Monitoring → Routing Element (routing/in) --------------------------------

@dataclass(kw_only=True)
class PathRequest(Message):
    TYPE = "path_request"
    TOPIC = "`routing/in` (req/rep)"
    session_id: str | None = None
    src: str = req("KM name")
    dst: str = req("KM name")
    rate_bps: float = 0.0
    exclude_links: list[str] = field(default_factory=list)
    reserve: bool | None = opt("book `rate_bps` on every link; default: when a session_id "
                               "is given")
    backup: bool | None = opt("also compute a disjoint path; default true")


@dataclass(kw_only=True)
class PathReply(Message):
    TYPE = "path"
    TOPIC = "reply"
    ok: bool
    session_id: str | None = opt()
    path: list[str] | None = opt("KM names")
    links: list[str] | None = opt("link ids")
    backup: dict[str, Any] | None = nullable("disjoint path or null")
    weight: float | None = opt()
    reason: str | None = opt("when refused")


@dataclass(kw_only=True)
class Release(Message):
    TYPE = "release"
    TOPIC = "`routing/in`"
    NOTE = "frees a session's booking (a reply `released` {`ok`, `found`} when asked)"
    session_id: str


@dataclass(kw_only=True)
class Released(Message):
    TYPE = "released"
    TOPIC = "reply"
    ok: bool
    found: bool


@dataclass(kw_only=True)
class LinkMetrics(Message):
    TYPE = "link_metrics"
    TOPIC = "`routing/in`"
    NOTE = "Monitoring → Routing, every round"
    link: str
    skr_bps: float | None = None
    qber: float | None = None
    stored_bits: float | None = None
    rtt_ms: float | None = None
    sessions: int | None = None
    status: str | None = None


@dataclass(kw_only=True)
class TopologyViewRequest(Message):
    TYPE = "topology_view"
    TOPIC = "`routing/in` (req/rep)"
    NOTE = "the reply `topology_view` holds the whole routing DB"


@dataclass(kw_only=True)
class TopologyView(Message):
    TYPE = "topology_view"
    TOPIC = "reply"
    NOTE = "links with metrics, alarms, weights, reservations"
    ok: bool


@dataclass(kw_only=True)
class OkReply(Message):
    TYPE = "ok"
    TOPIC = "reply"
    ok: bool


@dataclass(kw_only=True)
class ErrorReply(Message):
    TYPE = "error"
    TOPIC = "reply"
    NOTE = "the answer to a request of unknown type or a malformed request"
    ok: bool = False
    reason: str


# --- telemetry, alarms, topology, events, operator commands -------------------------------

@dataclass(kw_only=True)
class Telemetry(Message):
    """What every telemetry sample has; :func:`decode_telemetry` reads the full sample."""

    TYPE = "telemetry"
    TOPIC = "`telemetry/<node>/<link>`"
    source: str = req("`qkd` for a module, `km`")
    node: str
    link: str


@dataclass(kw_only=True)
class ModuleTelemetry(Telemetry):
    LABEL = " (module)"
    NOTE = "more fields of the module's statistics (`blocks_ok`, `time_scale`, ...) follow"
    source: str = req("`qkd`")
    side: str | None = nullable("`a`/`b`")
    status: str | None = None
    qber: float | None = nullable("of the last block")
    qber_block: int | None = nullable("that block's number")
    skr_bps: float | None = None
    sifted_bps: float | None = None
    stored_bits: float | None = None
    realtime_factor: float | None = None
    eve_fraction: float | None = None


@dataclass(kw_only=True)
class KmTelemetry(Telemetry):
    LABEL = " (KM)"
    source: str = req("`km`")
    pool_bits: float | None = opt()
    sessions: int | None = opt()
    rtt_ms: float | None = opt()


def decode_telemetry(payload: bytes | str | dict[str, Any]) -> ModuleTelemetry | KmTelemetry:
    """A telemetry sample as the class its ``source`` names (a module's unless ``km``)."""
    obj = parse_json(payload)
    cls = KmTelemetry if obj.get("source") == "km" else ModuleTelemetry
    return decode(obj, cls)


@dataclass(kw_only=True)
class LinkAlarm(Message):
    TYPE = "alarm"
    TOPIC = "`alarm/<link>` (retained)"
    link: str
    kind: str = req("`link_down`, `qber_high`, `qber_suspicious`, `clear`")
    qber: float | None = None
    threshold: float | None = None
    suspicion: float | None = nullable("the link's suspicion level")
    reason: str | None = None
    skr_bps: float | None = None


@dataclass(kw_only=True)
class Topology(Message):
    TYPE = "topology"
    TOPIC = "`topology` (retained)"
    version: int = 0
    nodes: list[dict[str, Any]] = req("[{`id`, `mgmt_ipv4`, `status`}]")
    links: list[dict[str, Any]] = req("[{`id`, `a`, `b`, `type` PHYS/VIRT, `status`, `hops`, "
                                      "`session_id` (VIRT)}]")


@dataclass(kw_only=True)
class Event(Message):
    TYPE = "event"
    TOPIC = "`events/<element>`"
    NOTE = "free fields follow"
    element: str
    kind: str
    session_id: str | None = opt()


@dataclass(kw_only=True)
class EveCommand(Message):
    TYPE = "eve"
    TOPIC = "`km/<node>/qkd/<link>/eve`"
    NOTE = "operator (`qkdtwin eve`) → the link's a-end module, which confirms by telemetry"
    link: str | None = None
    fraction: float = req("0–1, the intercepted fraction")
