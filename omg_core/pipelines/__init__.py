"""What each node does, end to end — load, fuse, regional attention, attention maps,
train — called alike by the nodes, the benchmarks and the tests."""
