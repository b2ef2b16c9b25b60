"""Fault campaigns against real processes: `jobq chaos`. See README "Guarantees"."""
