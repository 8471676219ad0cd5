"""Access Control: authenticates applications for the KMs against the user-profile DB.

Requests on ``qkd/v1/access/in`` (MQTT v5 request/reply):

* ``authenticate`` (from a KM; docs/architecture.md "MQTT messages") → ``auth_result``.
* ``lookup_sae`` {sae_id} → {ok, sae_id, user, km, status} (admission: where is a peer).
* ``profile`` {user} → {ok, user, status, sla, applications} (admission: the SLA).

Requests on ``qkd/v1/access/admin``, a topic only the operator identity may write (the
broker ACL), so a KM cannot manage users:

* ``user_list`` / ``user_add`` {user: record} / ``user_disable`` {name} / ``user_enable``
  {name} (operator, ``qkdtwin users``) → {ok, users | user | reason}.

Revocations: a disabled user has a retained ``revocation`` {user, sae_ids} on
``qkd/v1/access/revoked/<user>`` (published when disabled, cleared when enabled, all of them
again at every broker connection): every KM ends that user's live sessions and forgets its
cached authentications (issue 13, M3).

Config (besides docs of control.common): ``db`` (default ``<data_dir>/users.db``),
``users`` (the users file's list) or ``users_file`` (path), ``seed_overwrite`` (bool).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from qkdtwin import bus
from qkdtwin import messages as m
from qkdtwin.bus import Message
from qkdtwin.control.common import Element
from qkdtwin.control.userdb import InvalidRecord, UserDB
from qkdtwin.errors import UserError
from qkdtwin.service import run_service


def check_authentication(db: UserDB, req: dict[str, Any]) -> dict[str, Any]:
    """The decision for one ``authenticate`` request (pure apart from the DB read)."""
    sae_id = req.get("sae_id")
    km = req.get("km")
    cert = req.get("cert") or {}
    base = {"type": "auth_result", "sae_id": sae_id, "ok": False}
    if not isinstance(sae_id, str) or not isinstance(cert, dict):
        return {**base, "reason": "malformed request"}
    app = db.application(sae_id)
    if app is None:
        return {**base, "user": None, "reason": "unknown application"}
    base["user"] = app["user"]
    if app["status"] != "active":
        return {**base, "reason": "user disabled"}
    if cert.get("cn") != sae_id or cert.get("o") != app["user"] or cert.get("ou", "sae") != "sae":
        return {**base, "reason": "certificate does not match the application"}
    fp = app.get("fingerprint")
    if fp and str(cert.get("fingerprint", "")).lower().replace(":", "") != fp:
        return {**base, "reason": "certificate fingerprint does not match"}
    if km is not None and km != app["km"]:
        return {**base, "reason": f"application is not registered at {km}"}
    return {**base, "ok": True, "sla": app["sla"], "km": app["km"]}


class AccessControl(Element):
    role = "access"
    default_port = 9101

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.db = UserDB(config.get("db") or self.data_dir / "users.db")
        users = config.get("users")
        if users is None and config.get("users_file"):
            path = Path(config["users_file"])
            try:
                users = (yaml.safe_load(path.read_text()) or {}).get("users", [])
            except (OSError, yaml.YAMLError, AttributeError) as exc:
                raise UserError(f"users_file {path}: {exc}") from None
        try:
            self.db.seed(users or [], overwrite=bool(config.get("seed_overwrite", False)))
        except InvalidRecord as exc:
            raise UserError(f"users: {exc}") from None

    def setup(self) -> None:
        self.bus.subscribe(bus.ACCESS_IN, self.on_request)
        self.bus.subscribe(bus.ACCESS_ADMIN, self.on_admin_request)
        self.bus.on_connected(self._publish_revocations)

    def _publish_revocations(self) -> None:
        """Every user's revocation state, retained (a broker restart loses retained ones)."""
        for u in self.db.list():
            self._revocation(u["name"])

    def _revocation(self, name: str) -> None:
        """Publish (disabled) or clear (active or unknown) the retained revocation of ``name``."""
        u = self.db.get(name)
        topic = bus.access_revoked(name)
        if u is None or u["status"] == "active":
            self.bus.clear_retained(topic)
            return
        self.bus.publish(topic, m.Revocation(
            user=name, sae_ids=[a["sae_id"] for a in u["applications"]]).to_payload(),
            retain=True)

    def healthz(self) -> dict[str, Any]:
        return {**super().healthz(), "users": len(self.db.list())}

    def on_request(self, topic: str, payload: dict[str, Any], msg: Message) -> None:
        self._dispatch(payload, msg, {
            m.Authenticate: self.authenticate, m.LookupSae: self.lookup_sae,
            m.ProfileRequest: self.profile,
        })

    def on_admin_request(self, topic: str, payload: dict[str, Any], msg: Message) -> None:
        self._dispatch(payload, msg, {
            m.UserList: self.user_list, m.UserAdd: self.user_add,
            m.UserDisable: self.user_disable, m.UserEnable: self.user_enable,
        })

    def _dispatch(self, payload: dict[str, Any], msg: Message, handlers: dict) -> None:
        kind = payload.get("type")
        self.count(str(kind))
        try:
            req = m.decode_any(payload, handlers)
        except m.BadMessage as exc:
            # the asker gets the reason instead of a timeout; the bus logs the payload
            known = any(cls.TYPE == kind for cls in handlers)
            self.bus.reply(msg, m.ErrorReply(
                reason=str(exc) if known else f"unknown request type {kind!r}").to_payload())
            raise
        try:
            answer = handlers[type(req)](req)
        except InvalidRecord as exc:
            answer = m.ErrorReply(reason=str(exc))
        self.bus.reply(msg, answer.to_payload())

    def authenticate(self, req: m.Authenticate) -> m.AuthResult:
        res = m.build(m.AuthResult, check_authentication(self.db, req.to_payload()))
        if res.ok:
            self.event("auth_accepted", req.session_id, km=req.km, sae_id=res.sae_id,
                       user=res.user)
        else:
            self.event("auth_refused", req.session_id, km=req.km, sae_id=res.sae_id,
                       user=res.user, reason=res.reason)
        return res

    def lookup_sae(self, req: m.LookupSae) -> m.SaeReply:
        app = self.db.application(req.sae_id)
        if not app:
            return m.SaeReply(ok=False, reason="unknown application")
        return m.SaeReply(ok=True, sae_id=app["sae_id"], user=app["user"], km=app["km"],
                          status=app["status"])

    def profile(self, req: m.ProfileRequest) -> m.ProfileReply:
        u = self.db.get(req.user)
        if not u:
            return m.ProfileReply(ok=False, reason="unknown user")
        return m.ProfileReply(ok=True, user=u["name"], status=u["status"], sla=u["sla"],
                              applications=u["applications"])

    def user_list(self, req: m.UserList) -> m.UsersReply:
        return m.UsersReply(ok=True, users=self.db.list())

    def user_add(self, req: m.UserAdd) -> m.UserReply:
        u = self.db.upsert(req.user)
        self.event("user_added", user=u["name"], status=u["status"],
                   applications=[a["sae_id"] for a in u["applications"]])
        self._revocation(u["name"])
        return m.UserReply(ok=True, user=self.db.get(u["name"]))

    def _set_status(self, name: str, status: str) -> m.UserReply:
        if not self.db.set_status(name, status):
            return m.UserReply(ok=False, reason=f"unknown user {name}")
        self.event("user_" + ("disabled" if status == "disabled" else "enabled"), user=name)
        self._revocation(name)
        return m.UserReply(ok=True, user=self.db.get(name))

    def user_disable(self, req: m.UserDisable) -> m.UserReply:
        return self._set_status(req.name, "disabled")

    def user_enable(self, req: m.UserEnable) -> m.UserReply:
        return self._set_status(req.name, "active")


def main(config: dict[str, Any]) -> None:
    AccessControl(config).serve_forever()


if __name__ == "__main__":
    sys.exit(run_service(main, "qkdtwin Access Control element"))
