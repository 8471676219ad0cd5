"""ETSI GS QKD 015 names shared by the SDN controller (control/sdn.py) and its clients
(admission, the KM's SDN agent, tests). Kept apart so a client needs no server import."""

# The REST prefix of the controller's node tree: <base>/<qkdn_id>[/qkd_links/qkd_link/<id>].
SDN_BASE = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
