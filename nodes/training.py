"""Nodes: training."""

NODES: list = []
