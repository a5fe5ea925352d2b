"""The matching-based distillers' algorithms (DC, DM, MTT, BPTT) and what they share.

The plugin classes with their options live in ``ddprobe.builtin.distiller_matching``; these modules import torch
and are only loaded when a set is actually distilled.
"""
