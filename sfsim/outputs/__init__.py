"""Outputs: the simulation result, reports, traces, Gantt charts and output folders."""
