"""Validation: profiling this machine and comparing real runs with the simulator."""
