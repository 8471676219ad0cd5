"""Application (SAE) side of the Key Manager's northbound APIs: a small client library
(:mod:`qkdtwin.sae.client`), how to find a lab's KM and certificates
(:mod:`qkdtwin.sae.lab`), and the ``qkdtwin sae`` command (:mod:`qkdtwin.sae.cli`)."""

from qkdtwin.sae.client import KmResponse, SaeClient, SaeError

__all__ = ["KmResponse", "SaeClient", "SaeError"]
