"""Transport: roles, messages and the wire between processes, and the emulated network."""
