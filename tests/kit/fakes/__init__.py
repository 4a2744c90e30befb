"""Fake payment gateways, one module per provider (see ``tests.kit.gateways``)."""
