"""A loopback test bed for the tests and the benchmarks: a throw-away PKI (``pki``), a real
Mosquitto on loopback (``broker``), stand-in QKD modules (``fake_qkd_module``), Key Manager
processes linked by them (``km_cluster``), a stand-in control plane (``fake_control``:
access + admission over the MQTT contract, with the Routing Element's path search and
admission's hop entries) and process clean-up (``procs``).

Nothing in the services imports this package; it runs them the way a lab does, without a
lab (no root, no namespaces)."""
