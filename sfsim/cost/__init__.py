"""The pure cost model: FLOPs, seconds, bytes, memory and energy of every piece of work."""
