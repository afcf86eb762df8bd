"""The SimPy engine: recording, server pools, credits, policies and pacing."""
