"""The synthetic world's words: weapon and distractor shapes, the categories they label, colours, backgrounds."""

from __future__ import annotations

WEAPON_KINDS: dict[str, str] = {
    "pistol": "gun",
    "revolver": "gun",
    "rifle": "gun",
    "knife": "knife",
    "dagger": "knife",
}
"""Weapon shape → its fine category. The single-prompt category ``weapon`` is any of them."""

DISTRACTOR_KINDS: tuple[str, ...] = ("circle", "box", "phone", "bottle", "umbrella", "mug", "spoon", "star")

CATEGORY_KINDS: dict[str, tuple[str, ...]] = {
    "gun": tuple(k for k, c in WEAPON_KINDS.items() if c == "gun"),
    "knife": tuple(k for k, c in WEAPON_KINDS.items() if c == "knife"),
    "weapon": tuple(WEAPON_KINDS),
}
"""Categories a synthetic set can be labelled with, and the weapon shapes each one covers."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "orange": (235, 130, 20),
    "yellow": (230, 210, 40),
    "green": (40, 160, 60),
    "cyan": (40, 190, 200),
    "blue": (40, 70, 200),
    "purple": (130, 50, 170),
    "pink": (235, 120, 180),
    "brown": (120, 75, 35),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
}

BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "striped", "checkered", "noisy", "dotted", "wavy")
