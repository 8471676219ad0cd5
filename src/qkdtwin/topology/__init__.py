"""The lab model: load a containerlab topology (`labs/<lab>.clab.yml`) and its users file.

Validation runs in three layers, and every problem becomes one line that names the node,
link or user and the field:

1. YAML (anchors and merge keys are resolved by the loader),
2. containerlab's JSON schema (`schema`),
3. the project's conventions: roles and mgmt addresses (`nodes`), endpoints, addresses,
   `vars.qkd` and `vars.impairment` (`links`), users (`users`).

`load_lab()` (in `loading`) returns a clean `Lab` (`model`) or raises `LabInvalid` (a
`UserError`) holding the list of problems. Import the public names from this package.
"""

from qkdtwin.topology.links import (
    DERIVED_P2P_POOL,
    IMPAIRMENT_RANGES,
    validate_impairment,
    validate_qkd_vars,
)
from qkdtwin.topology.loading import check_lab, load_lab, resolve_lab_path, users_path_for
from qkdtwin.topology.model import (
    BROKER_PORT,
    CONTROL_ROLES,
    MGMT_INTERFACE,
    ROLE_LABEL,
    ROLES,
    Application,
    Endpoint,
    Lab,
    LabInvalid,
    Link,
    Node,
    User,
)
from qkdtwin.topology.schema import schema_problems
from qkdtwin.topology.users import SLA_FIELDS, USER_STATUSES

__all__ = [
    "BROKER_PORT", "CONTROL_ROLES", "DERIVED_P2P_POOL", "IMPAIRMENT_RANGES", "MGMT_INTERFACE",
    "ROLE_LABEL", "ROLES", "SLA_FIELDS", "USER_STATUSES", "Application", "Endpoint", "Lab",
    "LabInvalid", "Link", "Node", "User", "check_lab", "load_lab", "resolve_lab_path",
    "schema_problems", "users_path_for", "validate_impairment", "validate_qkd_vars",
]
