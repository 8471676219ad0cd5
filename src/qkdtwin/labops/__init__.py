"""Operating a deployed lab from the host.

- :mod:`.lab`: connecting: :class:`DeployedLab` reads the inventory and PKI that
  `qkdtwin deploy` leaves (KM URLs, SAE identities, broker settings, the runtime);
- :mod:`.nodes`: running a command inside a node through the lab's runtime: cutting and
  restoring links, supervisorctl (kill/stop/start/restart a program);
- :mod:`.eve`: the eavesdropper of a QKD link (MQTT operator message, confirmed);
- :mod:`.operations`: :class:`LabOperator`, all of it on one lab (dashboard, scenario faults).

The commands (`qkdtwin sae|users|eve|dashboard|scenario|record|demo`) use this package;
they do not import each other.
"""
