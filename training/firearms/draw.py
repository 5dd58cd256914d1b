"""Drawing one image of a firearm model: the silhouette from its geometry, then pose, finish, light, background,
occlusion and crop drawn per image."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from training.firearms.catalogue import FirearmModel

FINISHES = [
    [(28, 28, 30), (45, 45, 48), (70, 70, 72)],  # black
    [(150, 150, 155), (185, 185, 190), (110, 110, 115)],  # stainless
    [(140, 120, 85), (165, 145, 105), (95, 80, 55)],  # tan / FDE
    [(55, 65, 45), (75, 85, 60), (40, 45, 32)],  # olive
]
TOY = [(230, 60, 40), (40, 120, 230), (250, 200, 30), (60, 180, 80)]


def _poly(d: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: tuple[int, int, int]) -> None:
    d.polygon([(float(x), float(y)) for x, y in pts], fill=fill)


def silhouette(m: FirearmModel, unit: float, colours: list[tuple[int, int, int]]) -> Image.Image:
    """The model drawn flat, facing right, on a transparent canvas; ``unit`` is the body length in pixels."""
    body_w, body_h = m.body * unit, m.body_h * unit
    w = int((m.stock + m.body + m.barrel + 0.3) * unit) + 8
    h = int((m.body_h + m.grip_len + m.magazine + m.stock_drop + 0.4) * unit) + 8
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    main, light, dark = colours
    x0 = m.stock * unit + 4
    y0 = 0.18 * unit + 4
    # stock
    if m.stock > 0:
        sd = m.stock_drop * unit
        _poly(d, [(4, y0 + sd), (x0, y0), (x0, y0 + body_h), (4, y0 + body_h * 1.4 + sd)], dark)
    # receiver / slide
    d.rectangle([x0, y0, x0 + body_w, y0 + body_h], fill=main)
    for s in range(m.slots):  # serrations
        sx = x0 + body_w * (0.08 + 0.05 * s)
        d.line([sx, y0 + 2, sx, y0 + body_h * 0.45], fill=light, width=max(1, int(unit * 0.012)))
    if m.rail:
        d.rectangle([x0 + body_w * 0.15, y0 - unit * 0.03, x0 + body_w * 0.9, y0], fill=dark)
    # barrel
    bx = x0 + body_w
    by = y0 + body_h * 0.25
    d.rectangle([bx, by, bx + m.barrel * unit, by + m.barrel_h * unit], fill=light if m.family == "revolver" else main)
    if m.family == "shotgun":  # pump
        d.rectangle(
            [
                bx + m.barrel * unit * 0.2,
                by + m.barrel_h * unit,
                bx + m.barrel * unit * 0.55,
                by + m.barrel_h * unit * 2.1,
            ],
            fill=dark,
        )
    # cylinder (revolver)
    if m.family == "revolver":
        cx, cy, r = x0 + body_w * 0.55, y0 + body_h * 0.55, m.magazine * unit * 0.6
        d.ellipse([cx - r * 1.2, cy - r, cx + r * 1.2, cy + r], fill=light)
        for k in range(3):
            d.line([cx - r * 1.1, cy - r * 0.6 + k * r * 0.6, cx + r * 1.1, cy - r * 0.6 + k * r * 0.6], fill=dark)
    # grip
    ga = math.radians(m.grip_angle)
    gx = x0 + body_w * (0.12 if m.stock == 0 else 0.35)
    gl, gw = m.grip_len * unit, m.grip_w * unit
    gy = y0 + body_h
    _poly(d, [(gx, gy), (gx + gw, gy), (gx + gw - gl * math.sin(ga), gy + gl), (gx - gl * math.sin(ga), gy + gl)], dark)
    # trigger guard
    tg = m.guard * unit
    d.arc(
        [gx + gw * 0.9, gy - tg * 0.1, gx + gw * 0.9 + tg * 1.3, gy + tg],
        0,
        180,
        fill=dark,
        width=max(2, int(unit * 0.02)),
    )
    # magazine
    if m.magazine > 0 and m.family != "revolver":
        mx = x0 + body_w * 0.58
        ml, mw = m.magazine * unit, 0.13 * unit
        curve = m.mag_curve * ml
        _poly(d, [(mx, gy), (mx + mw, gy), (mx + mw + curve, gy + ml), (mx + curve, gy + ml)], dark)
    # sights
    if m.sight == 1:
        d.rectangle([bx - unit * 0.04, y0 - unit * 0.05, bx, y0], fill=dark)
        d.rectangle([x0 + unit * 0.05, y0 - unit * 0.05, x0 + unit * 0.11, y0], fill=dark)
    elif m.sight == 2:
        d.rounded_rectangle(
            [x0 + body_w * 0.25, y0 - unit * 0.16, x0 + body_w * 0.8, y0 - unit * 0.03], radius=unit * 0.05, fill=dark
        )
    # look-alike markings
    muzzle = [bx + m.barrel * unit - unit * 0.07, by, bx + m.barrel * unit, by + m.barrel_h * unit]
    if m.tip == "toy":
        d.rectangle(muzzle, fill=(255, 120, 0))
    elif m.tip == "alarm":
        d.rectangle(muzzle, fill=(200, 200, 200))
    elif m.tip == "airsoft":
        d.rectangle([x0, y0 + body_h * 0.6, x0 + body_w, y0 + body_h], fill=(60, 60, 60))
    return img


def draw_image(m: FirearmModel, seed: int, size: int = 128) -> Image.Image:
    """One photograph-like view of ``m``: pose, scale, finish, light, background, occlusion and crop vary."""
    rng = random.Random(f"{m.name}:{seed}")
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    if m.tip == "toy":
        c = TOY[(m.palette + rng.randrange(2)) % len(TOY)]
        colours = [c, tuple(min(255, v + 40) for v in c), tuple(max(0, v - 50) for v in c)]
    else:
        base = FINISHES[(m.palette + (rng.random() < 0.2)) % len(FINISHES)]
        jitter = rng.randint(-12, 12)
        colours = [tuple(int(np.clip(v + jitter, 0, 255)) for v in c) for c in base]
    span = m.stock + m.body + m.barrel + 0.3
    unit = size * rng.uniform(0.55, 0.85) / span
    gun = silhouette(m, unit, colours)  # type: ignore[arg-type]
    if rng.random() < 0.5:
        gun = gun.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gun = gun.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BICUBIC, expand=True)
    # background: a gradient with texture
    top, bottom = (nrng.integers(40, 230, 3), nrng.integers(40, 230, 3))
    t = np.linspace(0, 1, size)[:, None, None]
    bg = (top * (1 - t) + bottom * t) * np.ones((size, size, 3))
    bg += nrng.normal(0, rng.uniform(3, 18), (size, size, 3))
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).convert("RGBA")
    gx = rng.randint(-gun.width // 8, max(0, size - gun.width + gun.width // 8))
    gy = rng.randint(-gun.height // 8, max(0, size - gun.height + gun.height // 8))
    canvas.alpha_composite(gun, (max(-gun.width, min(size, gx)), max(-gun.height, min(size, gy))))
    img = canvas.convert("RGB")
    if rng.random() < 0.35:  # occluder (a hand, a strap, a table edge)
        d = ImageDraw.Draw(img)
        ox, oy = rng.randrange(size), rng.randrange(size)
        r = int(size * rng.uniform(0.06, 0.16))
        d.ellipse([ox - r, oy - r, ox + r, oy + r], fill=tuple(int(v) for v in nrng.integers(60, 220, 3)))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return img
