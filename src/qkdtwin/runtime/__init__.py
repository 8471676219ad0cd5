"""Lab runtimes: the interface (:mod:`.base`), the backends (:mod:`.netns`, :mod:`.clab`),
the registry by name (:mod:`.registry`), the Ansible inventory (:mod:`.inventory`) and the
``validate/up/down/status/inventory`` commands (:mod:`.cli`)."""
