"""The emulated QKD module service: one process per link end (see docs/quantum.md,
"QKD module service"). Run with ``python -m qkdtwin.qkd_module --config FILE``."""
