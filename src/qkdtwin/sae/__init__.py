"""Application (SAE) side of the Key Manager's northbound APIs: a small client library
(:mod:`qkdtwin.sae.client`) and the ``qkdtwin sae`` command (:mod:`qkdtwin.sae.cli`); a lab's
KMs and certificates come from :mod:`qkdtwin.labops.lab`."""

from qkdtwin.sae.client import KmResponse, SaeClient, SaeError

__all__ = ["KmResponse", "SaeClient", "SaeError"]
