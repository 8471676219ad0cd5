"""qkdtwin: a digital twin of a QKD network with a virtualized key-management plane."""

__version__ = "0.1.0"
