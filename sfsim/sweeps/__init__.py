"""Sweeps: grids of overridden scenarios, where their points run, and their plot."""
