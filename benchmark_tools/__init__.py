"""The seed's package name, kept so a seed user's files run unchanged.

A client file written for the seed says ``from benchmark_tools import ClientProtocol``;
that name is :class:`protocol.ClientProtocol` itself (the same class object, so the
client loader's ``issubclass`` check finds the user's subclass). ``python -m
benchmark_tools -f conf.yml`` runs a test as ``loadmaster run -f conf.yml`` does.
New code should import from :mod:`protocol`.
"""

from protocol import ClientProtocol

__all__ = ["ClientProtocol"]
