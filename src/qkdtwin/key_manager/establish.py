"""Establishing a session, shared by the ETSI 014 and 004 services: authentication with
access control, then ``config_request`` to admission control and the wait for its
``session_config`` (AUTHENTICATING → USER_ACCEPTED → OPERATIVE, DESIGN.md §6)."""

from __future__ import annotations

from typing import Any

from qkdtwin.key_manager.control import ControlUnavailable
from qkdtwin.key_manager.errors import KmError
from qkdtwin.key_manager.identity import Identity
from qkdtwin.key_manager.sessions import TERMINATED, USER_ACCEPTED, Session
from qkdtwin.key_manager.shared import Part, Shared
from qkdtwin.messages import AuthResult


class Establishment(Part):
    def __init__(self, sh: Shared) -> None:
        super().__init__(sh)

    def authenticate(self, ident: Identity, peer_sae_id: str | None,
                     session_id: str | None = None) -> AuthResult:
        """Access control's ``auth_result`` for this SAE certificate and peer; refusals and
        an unreachable control plane are KmError."""
        if ident.ou != "sae":
            raise KmError("unauthorized", "client certificate is not an application (SAE)"
                          " certificate", status004=10)
        try:
            rep = self.control.authenticate(ident.as_dict(), peer_sae_id, session_id)
        except ControlUnavailable as exc:
            raise KmError("unavailable", str(exc), status004=4) from None
        if not rep.ok:
            reason = "refused by access control" if rep.reason is None else rep.reason
            raise KmError("unauthorized", f"SAE {ident.cn} not authorised: {reason}",
                          status004=10)
        return rep

    def establish(self, s: Session, ident: Identity, peer: str, api: str,
                  qos: dict[str, Any], wait_s: float) -> None:
        """Drive a new session to OPERATIVE; on return it may still be USER_ACCEPTED (004)."""
        self.control.event("session_request", s.session_id, api=api, sae_id=ident.cn,
                           peer_sae_id=peer)
        try:
            rep = self.authenticate(ident, peer, s.session_id)
        except KmError as exc:
            self.sessions.transition(s, TERMINATED, exc.message)
            raise
        s.user = rep.user or ident.o
        with s.cond:
            s.certs[ident.cn] = ident.fingerprint
        cap_bits = (rep.sla or {}).get("max_key_size")
        if isinstance(cap_bits, int) and not isinstance(cap_bits, bool) and cap_bits > 0:
            s.qos["sla_max_key_size"] = cap_bits  # ETSI 014 sizes are checked per request
            if api == "014" and cap_bits < s.key_size:
                # the default size (status key_size) within what the user may have
                s.key_size = max(8, cap_bits // 8 * 8)
                qos = {**qos, "key_chunk_size": s.key_size // 8}
        if "priority" not in qos:
            # no priority asked for: the KM default, within what the user's SLA allows
            cap = (rep.sla or {}).get("max_priority")
            prio = self.cfg.default_priority
            if isinstance(cap, int | float) and not isinstance(cap, bool):
                prio = max(0, min(prio, int(cap)))
            qos = {**qos, "priority": prio}
            s.priority = prio
        self.sessions.transition(s, USER_ACCEPTED)
        try:
            self.control.config_request(s.session_id, s.user or "", ident.cn, peer, api, qos)
        except ControlUnavailable as exc:
            self.sessions.transition(s, TERMINATED, str(exc))
            raise KmError("unavailable", str(exc), status004=4) from None
        with s.cond:
            s.cond.wait_for(lambda: s.state != USER_ACCEPTED, wait_s)

    def bind(self, s: Session, ident: Identity, peer_sae_id: str | None) -> None:
        """A request on the live session ``s`` (ETSI 014, or an application joining): the
        session is bound to the certificate access control accepted; another certificate
        with the same CN is judged by access control again (its pinned fingerprint, the
        user's status) and the session moves to it only if accepted."""
        if s.certs.get(ident.cn) == ident.fingerprint:
            return
        self.authenticate(ident, peer_sae_id, s.session_id)
        with s.cond:
            s.certs[ident.cn] = ident.fingerprint

    def check_owner(self, s: Session, ident: Identity) -> None:
        """ETSI 004 GET_KEY/CLOSE: only the certificate that opened its side of stream ``s``
        (a side without a binding yet, e.g. restored from an older store, is bound now)."""
        fp = s.certs.get(ident.cn)
        if fp is None:
            self.bind(s, ident, s.peer_sae_id if ident.cn == s.local_sae_id
                      else s.local_sae_id)
        elif fp != ident.fingerprint:
            raise KmError("forbidden", f"key stream {s.session_id} was opened by another"
                          f" certificate of SAE {ident.cn}", status004=10)

    @staticmethod
    def wait_live(s: Session, wait_s: float) -> None:
        with s.cond:
            s.cond.wait_for(lambda: s.state != USER_ACCEPTED and s.state != "AUTHENTICATING",
                            wait_s)

    @staticmethod
    def refusal(s: Session) -> KmError:
        """The error to answer for a session the control plane ended or refused."""
        reason = s.reason or "session terminated"
        if reason.startswith("not authorised") or "not authorised" in reason:
            return KmError("unauthorized", reason, status004=10)
        return KmError("refused", f"request refused by the control plane: {reason}",
                       status004=7 if s.qos.get("counter_qos") else 4,
                       extra={"qos": s.qos.get("counter_qos")} if s.qos.get("counter_qos")
                       else None)
