"""What crosses a process boundary: messages, their encoding, size limits, sockets.

Master, agents and workers import from here; user code never needs to.
"""
