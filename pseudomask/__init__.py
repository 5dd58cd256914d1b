"""Offline pseudo-mask generation: GroundingDINO boxes for the prompts, then SAM masks, on the patch grid.

Imports ``dangerclip`` (preprocessing geometry, manifest format), torch, segment-anything and groundingdino.
"""
