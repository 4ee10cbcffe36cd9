"""Nodes: concepts."""

NODES: list = []
