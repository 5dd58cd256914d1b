"""The firearm models: a family prototype each, and models drawn around it (deterministic by seed)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

FAMILIES = ("pistol", "revolver", "rifle", "shotgun", "smg", "lookalike")
LOOKALIKE_KINDS = ("toy", "alarm", "airsoft")


@dataclass(frozen=True)
class FirearmModel:
    """One firearm model's fixed geometry, in units of the body length (drawn at any scale).

    The look-alikes copy a lethal family's shape and differ in finish (toy: bright plastic with an orange tip;
    alarm: a blocked barrel; airsoft: a two-tone body) — confusable by shape, as real ones are.
    """

    name: str
    family: str
    barrel: float  # barrel length
    barrel_h: float  # barrel height
    body: float  # receiver/slide length
    body_h: float
    grip_angle: float  # degrees from vertical
    grip_len: float
    grip_w: float
    stock: float  # 0: none
    stock_drop: float
    magazine: float  # 0: none (revolver: cylinder)
    mag_curve: float
    sight: int  # 0 none, 1 iron, 2 scope
    rail: bool
    slots: int  # slide serrations / vents
    guard: float  # trigger guard size
    tip: str = ""  # look-alike kind: toy, alarm, airsoft
    palette: int = 0  # finish palette index

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_GEOMETRY = "barrel barrel_h body body_h grip_angle grip_len grip_w stock stock_drop magazine mag_curve guard".split()
"""A family prototype's fields, the columns of the rows below."""
_ROWS = {
    #            barl  bar_h body  bod_h angle grip  grp_w stock drop  mag   curve guard
    "pistol":   (0.25, 0.10, 1.00, 0.22,   18, 0.55, 0.20, 0.00, 0.00, 0.00, 0.00, 0.22),
    "revolver": (0.65, 0.09, 0.55, 0.26,   25, 0.50, 0.19, 0.00, 0.00, 0.25, 0.00, 0.20),
    "rifle":    (1.30, 0.06, 1.00, 0.20,   20, 0.42, 0.16, 1.00, 0.10, 0.38, 0.25, 0.18),
    "shotgun":  (1.60, 0.09, 0.85, 0.20,   35, 0.30, 0.16, 1.15, 0.18, 0.00, 0.00, 0.17),
    "smg":      (0.45, 0.08, 1.00, 0.24,   12, 0.45, 0.17, 0.55, 0.02, 0.55, 0.05, 0.18),
}  # fmt: skip
_PROTOTYPES: dict[str, dict[str, float]] = {k: dict(zip(_GEOMETRY, v, strict=True)) for k, v in _ROWS.items()}


def make_catalogue(per_family: int = 10, seed: int = 0, spread: float = 0.18) -> list[FirearmModel]:
    """``per_family`` models in each of the six families (look-alikes copy pistols, rifles and smgs).

    Args:
        spread: relative spread of each model's geometry around its family prototype. Small spreads make
            models of a family hard to tell apart (the point of fine-grained data); see ``dataset.confusability``.
    """
    rng = random.Random(f"catalogue:{seed}")
    models = []
    for family in FAMILIES:
        for i in range(per_family):
            base_family = rng.choice(("pistol", "rifle", "smg")) if family == "lookalike" else family
            proto = _PROTOTYPES[base_family]
            geo = {k: max(0.0, v * (1 + rng.uniform(-spread, spread))) for k, v in proto.items()}
            geo["grip_angle"] = proto["grip_angle"] + rng.uniform(-12, 12) * spread / 0.18
            tip = LOOKALIKE_KINDS[i % 3] if family == "lookalike" else ""
            models.append(
                FirearmModel(
                    name=f"{family}-{tip + '-' if tip else ''}{i:02d}",
                    family=family,
                    sight=rng.choice((0, 1, 1, 2)) if base_family in ("rifle", "smg") else rng.choice((0, 1)),
                    rail=rng.random() < 0.5,
                    slots=rng.randint(0, 6),
                    tip=tip,
                    palette=rng.randint(0, 3),
                    **geo,
                )
            )
    return models
