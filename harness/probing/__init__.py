"""Probing a booted guest: tracefs probes, target programs, instruction cases, transparency
checks."""
