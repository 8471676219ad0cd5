"""The chaos soak (``benchmarks/soak.py``, docs/scenarios.md "Chaos soak"): applications
request keys on every pair of a deployed lab while random faults hit it, then the invariants
are checked.

- :mod:`.invariants`: the records a soak collects and the checker of the invariants (pure:
  records in, violations out; tests/unit/test_chaos_invariants.py feeds it each violation);
- :mod:`.traffic`: the applications (ETSI 014 and 004 through :mod:`qkdtwin.sae.client`);
- :mod:`.faults`: the random faults (through :mod:`qkdtwin.scenario.faults`);
- :mod:`.collect`: what the lab recorded (KM stores, the recorder's events, KM health,
  processes and namespaces left after teardown).
"""
