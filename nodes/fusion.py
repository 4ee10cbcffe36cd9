"""Nodes: fusion."""

NODES: list = []
