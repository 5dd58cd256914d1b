"""Fine-grained firearm data: a synthetic generator of firearm *models* (``draw``, ``catalogue``, ``dataset``) and
readers for the layouts users bring (``readers``: Firearm 14k's retrieval layout, folder-per-class).

Each model is a fixed geometry (barrel, body, grip angle, stock, magazine, sights, details) in one of six
families — pistol, revolver, rifle, shotgun, submachine gun, and non-lethal look-alikes (toy, alarm, airsoft)
— drawn with per-image variation (pose, scale, finish, lighting, background, occlusion, crop). Models of a
family share a prototype and differ by small amounts, so they are confusable, as the seeds' "low inter-class,
high intra-class variance" data is. Imports ``dangerclip.runtime`` helpers, numpy and Pillow.
"""
