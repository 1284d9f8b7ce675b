"""What crosses the wire: the tensor codec, the transports, the op-level protocol, and the names of fields and ops."""
