"""Nodes: regions."""

NODES: list = []
