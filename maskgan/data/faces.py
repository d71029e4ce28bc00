"""Drawing one synthetic face: its sampled geometry and colours, its part masks and its painted image.

Everything here is a pure function of the face and the RNG it is handed; synthetic.py decides the
seeds, the sizes and the files. Part masks overlap the way the released annotations do, so the
merged map only comes out right when parts are painted in class order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from maskgan.labels import CLASS_INDEX, NUM_CLASSES

_HAIR_COLORS: Mapping[str, tuple[int, int, int]] = {
    "black": (28, 22, 20), "brown": (92, 60, 38), "blond": (196, 162, 104), "red": (146, 62, 30),
    "gray": (158, 156, 152),
}  # fmt: skip
_IRIS_COLORS = ((70, 45, 30), (60, 90, 140), (70, 110, 70), (30, 25, 25))
_SKIN_LIGHT, _SKIN_DARK = (240, 204, 178), (90, 58, 42)
_SKIN_FAMILY = ("skin", "nose", "u_lip", "l_lip", "mouth")  # shaded as one rounded face
_MIRROR = {"r_eye": "l_eye", "r_brow": "l_brow", "r_ear": "l_ear"}  # share a colour on purpose
_FACE_COLOURS = (
    "skin", "hair", "l_eye", "r_eye", "nose", "neck", "l_ear", "r_ear", "l_brow", "r_brow", "u_lip", "l_lip",
    "mouth", "ear_r", "neck_l",
)  # fmt: skip
_FREE_COLOURS = ("background", "cloth", "hat", "eye_g")


@dataclass(frozen=True)
class Face:
    """Sampled geometry (normalised image coordinates, face-local units) and colours of one face."""

    cx: float
    cy: float
    half_width: float
    half_height: float
    roll: float  # radians
    yaw: float  # degrees
    pitch: float  # degrees
    hair: str  # "none" | "short" | "long"
    hair_color: str
    hairline: float  # face-local v of the hairline (-1 = top of the skin ellipse)
    hair_volume: float
    eye_open: float
    brow_tilt: float
    nose_scale: float
    mouth_width: float
    lip_height: float
    mouth_open: bool
    smile: float
    ears: tuple[bool, bool]
    earrings: tuple[bool, bool]
    eyeglasses: bool
    hat: bool
    necklace: bool
    cloth: bool
    neck_half_width: float
    shoulder_y: float
    shoulder_slope: float
    notch_depth: float
    skin_tone: float  # 0 = lightest, 1 = darkest
    palette: np.ndarray  # (19, 3) float32, row = class id
    eye_contrast: np.ndarray  # (3,) sclera colour minus iris colour


def sample_face(rng: np.random.Generator, *, accessory_probability: float) -> Face:
    """Draw one face's geometry and colours; each accessory is worn with accessory_probability."""
    u, p = rng.uniform, accessory_probability
    half_width = u(0.17, 0.22)
    half_height = half_width * u(1.25, 1.45)
    cy = 0.46 + rng.normal(0, 0.02)
    hair = str(rng.choice(["none", "short", "long"], p=[0.05, 0.5, 0.45]))
    ear_probability = 0.25 if hair == "long" else 0.9  # long hair mostly hides the ears
    ears = (bool(rng.random() < ear_probability), bool(rng.random() < ear_probability))
    wears_earrings = bool(rng.random() < p)
    hair_color = str(rng.choice(list(_HAIR_COLORS)))
    skin_tone = u(0.0, 1.0)
    geometry = dict(
        cx=0.5 + rng.normal(0, 0.02), cy=cy, half_width=half_width, half_height=half_height,
        roll=math.radians(rng.normal(0, 5)), yaw=float(np.clip(rng.normal(0, 10), -30, 30)),
        pitch=float(np.clip(rng.normal(0, 6), -20, 20)), hair=hair, hair_color=hair_color,
        hairline=u(-0.75, -0.3), hair_volume=u(0.0, 0.25), eye_open=u(0.6, 1.2),
        brow_tilt=u(-0.25, 0.05), nose_scale=u(0.85, 1.2), mouth_width=u(0.3, 0.42),
        lip_height=u(0.7, 1.3), mouth_open=bool(rng.random() < 0.4), smile=u(-0.05, 0.12), ears=ears,
        earrings=(ears[0] and wears_earrings, ears[1] and wears_earrings),
        eyeglasses=bool(rng.random() < p), hat=bool(rng.random() < p), necklace=bool(rng.random() < p),
        cloth=bool(rng.random() < 0.95), neck_half_width=half_width * u(0.5, 0.62),
        shoulder_y=min(cy + half_height + u(0.06, 0.14), 0.97), shoulder_slope=u(0.5, 1.5),
        notch_depth=u(0.04, 0.1), skin_tone=skin_tone,
    )  # fmt: skip
    skin = np.add(_SKIN_LIGHT, np.subtract(_SKIN_DARK, _SKIN_LIGHT) * skin_tone) + rng.normal(0, 6, 3)
    hair_rgb = np.add(_HAIR_COLORS[hair_color], rng.normal(0, 8, 3))
    lips = skin * 0.55 + np.array([190, 60, 70]) * 0.45
    iris = np.array(_IRIS_COLORS[int(rng.integers(len(_IRIS_COLORS)))])
    eye_white = np.array([225, 220, 215])
    eye = 0.7 * eye_white + 0.3 * iris  # the eye's mean colour; paint splits it into sclera and iris
    colours = {
        "background": rng.uniform(40, 220, 3), "skin": skin, "nose": skin * 0.88,
        "eye_g": rng.uniform(20, 90, 3), "l_eye": eye, "r_eye": eye,
        "l_brow": hair_rgb * 0.6, "r_brow": hair_rgb * 0.6, "l_ear": skin * 0.82, "r_ear": skin * 0.82,
        "mouth": (60, 22, 28), "u_lip": lips, "l_lip": lips * 1.12, "hair": hair_rgb,
        "hat": rng.uniform(20, 235, 3), "ear_r": (215, 175, 60), "neck_l": (225, 225, 235),
        "neck": skin * 0.72, "cloth": rng.uniform(20, 235, 3),
    }  # fmt: skip
    _separate(colours, rng)
    palette = np.zeros((NUM_CLASSES, 3), dtype=np.float32)
    for name, colour in colours.items():
        palette[CLASS_INDEX[name]] = colour
    return Face(**geometry, palette=palette, eye_contrast=(eye_white - iris).astype(np.float32))


def _separate(colours: dict[str, np.ndarray], rng: np.random.Generator, min_distance: float = 40.0) -> None:
    """Make class colours at least min_distance apart (RGB L2), in place.

    Face colours, fixed in _FACE_COLOURS order, keep their hue and take the smallest brightness step
    that clears every colour fixed before them; the freely drawn ones (background, cloth, hat,
    glasses) are redrawn until they clear all.
    """
    fixed: dict[str, np.ndarray] = {}

    def clearance(candidates: np.ndarray, name: str) -> np.ndarray:
        """(N, 3) candidate colours -> (N,) distance to the nearest fixed colour (mirror part excepted)."""
        others = [colour for other, colour in fixed.items() if _MIRROR.get(name) != other]
        if not others:
            return np.full(len(candidates), np.inf)
        return np.linalg.norm(candidates[:, None, :] - np.array(others)[None], axis=2).min(axis=1)

    for name in (*_FACE_COLOURS, *_FREE_COLOURS):
        colour = np.clip(np.asarray(colours[name], dtype=np.float64), 25, 230)
        if name in _FREE_COLOURS:
            draws = np.concatenate([colour[None], rng.uniform(25, 230, (30, 3))])
            scores = clearance(draws, name)
            passing = np.flatnonzero(scores >= min_distance)
            colour = draws[passing[0] if len(passing) else int(np.argmax(scores))]
        elif clearance(colour[None], name)[0] < min_distance:
            unit = colour / max(np.linalg.norm(colour), 1.0)  # along the colour: same hue, other brightness
            first = 1.0 if colour.mean() < 70 else -1.0  # darker first (a shade), unless near the floor
            steps = np.array([sign * k * 15.0 for k in range(1, 12) for sign in (first, -first)])
            candidates = np.clip(colour + steps[:, None] * unit, 25, 230)
            scores = clearance(candidates, name)
            passing = np.flatnonzero(scores >= min_distance)
            colour = candidates[passing[0] if len(passing) else int(np.argmax(scores))]
        fixed[name] = colour
    colours.update(fixed)


class _Canvas:
    """Draws face-local (u, v) and image-normalised (x, y) shapes into binary masks of one size."""

    def __init__(self, face: Face, size: int) -> None:
        self.face, self.size = face, size
        self.cos, self.sin = math.cos(face.roll), math.sin(face.roll)
        # Inner features slide sideways with yaw; the outline does not.
        self.shift = 0.35 * math.sin(math.radians(face.yaw))

    def local(self, u: np.ndarray, v: np.ndarray) -> list[tuple[float, float]]:
        """Face-local points (units of the face's half width / height, rolled) -> pixel points."""
        f = self.face
        dx, dy = np.asarray(u) * f.half_width, np.asarray(v) * f.half_height
        x = (f.cx + dx * self.cos - dy * self.sin) * self.size
        y = (f.cy + dx * self.sin + dy * self.cos) * self.size
        return list(zip(x.tolist(), y.tolist(), strict=True))

    def image(self, x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        """Image-normalised points in [0, 1] -> pixel points."""
        return [(a * self.size, b * self.size) for a, b in zip(x, y, strict=True)]

    def ellipse(self, cu: float, cv: float, ru: float, rv: float, tilt: float = 0.0) -> list:
        """A face-local ellipse, optionally tilted, as a 40-point polygon."""
        t = np.linspace(0.0, 2.0 * math.pi, 40, endpoint=False)
        u, v = ru * np.cos(t), rv * np.sin(t)
        cos, sin = math.cos(tilt), math.sin(tilt)
        return self.local(cu + u * cos - v * sin, cv + u * sin + v * cos)

    def blank(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        mask = Image.new("L", (self.size, self.size), 0)
        return mask, ImageDraw.Draw(mask)


def draw_parts(face: Face, size: int) -> dict[str, np.ndarray]:
    """Every part mask of a face, (size, size) uint8 0/255, overlapping as the release annotates."""
    canvas, shapes = _Canvas(face, size), {}
    s = canvas.shift

    def polygons(name: str, *outlines: list, erase: tuple = ()) -> None:
        mask, draw = canvas.blank()
        for outline in outlines:
            draw.polygon(outline, fill=255)
        for outline in erase:
            draw.polygon(outline, fill=0)
        shapes[name] = mask

    skin_outline = canvas.ellipse(0, 0, 1, 1)
    polygons("skin", skin_outline)  # the whole ellipse: hair, eyes, nose and mouth lie on top of it
    nose_u = np.array([-0.06, 0.06, 0.12, 0.21, 0.15, 0.0, -0.15, -0.21, -0.12]) * face.nose_scale
    nose_v = np.array([-0.12, -0.12, 0.15, 0.3, 0.38, 0.41, 0.38, 0.3, 0.15]) * face.nose_scale
    polygons("nose", canvas.local(nose_u + 1.2 * s, nose_v))
    if face.eyeglasses:  # filled lenses, bridge and temples; eyes and brows are painted over them
        bridge = canvas.local(np.array([-0.15, 0.15, 0.15, -0.15]) + s, [-0.12, -0.12, -0.07, -0.07])
        ends = ((s - 0.7, -1.0), (s + 0.7, 1.0))  # lens rim -> ear, on each side
        temples = [canvas.local([a, b, b, a], [-0.1, -0.08, -0.03, -0.05]) for a, b in ends]
        lenses = [canvas.ellipse(sign * 0.42 + s, -0.05, 0.3, 0.21) for sign in (-1, 1)]
        polygons("eye_g", *lenses, bridge, *temples)
    for side, sign in (("l", -1), ("r", 1)):
        narrowing = 1.0 - 0.4 * sign * math.sin(math.radians(face.yaw))  # the far eye looks narrower
        eye = canvas.ellipse(sign * 0.4 + s, -0.08, 0.19 * narrowing, 0.085 * face.eye_open)
        polygons(f"{side}_eye", eye)
        polygons(f"{side}_brow", canvas.ellipse(sign * 0.42 + s, -0.33, 0.25, 0.055, -sign * face.brow_tilt))
        if face.ears[(sign + 1) // 2]:
            polygons(f"{side}_ear", canvas.ellipse(sign * 1.02, 0.05, 0.16, 0.28, sign * 0.15))
    mouth_u = np.linspace(-face.mouth_width, face.mouth_width, 13)
    taper = 1.0 - (mouth_u / face.mouth_width) ** 2
    centre = 0.62 - face.smile * (1.0 - taper)  # corners rise when smiling
    gap = (0.07 if face.mouth_open else 0.0) * taper
    upper = centre - 0.09 * face.lip_height * taper**0.6 - 0.02 * np.cos(mouth_u * 30) * taper
    lower = centre + gap + 0.11 * face.lip_height * taper**0.7
    around = np.r_[mouth_u, mouth_u[::-1]] + s  # top edge left to right, bottom edge back
    if face.mouth_open:  # the inner mouth runs a little under both lips
        polygons("mouth", canvas.local(around * 0.95, np.r_[centre - 0.02, (centre + gap + 0.02)[::-1]]))
    polygons("u_lip", canvas.local(around, np.r_[upper, centre[::-1]]))
    polygons("l_lip", canvas.local(around, np.r_[centre + gap, lower[::-1]]))
    if face.hair != "none":
        volume = face.hair_volume
        outlines = [canvas.ellipse(0, -0.3, 1.1 + volume, 0.95 + volume)]
        if face.hair == "long":
            lobes = [canvas.ellipse(sign * (1 + volume / 2), 0.55, 0.32 + volume, 1.15) for sign in (-1, 1)]
            outlines += lobes  # down the sides, onto the shoulders
        # The face opening: no hair below the hairline, none over the cheeks; the hair covers the
        # top of the skin ellipse, which stays in the skin mask.
        polygons("hair", *outlines, erase=(canvas.ellipse(0, 0.4, 1.25, 0.4 - face.hairline),))
    if face.hat:  # crown and brim, over the top of the hair
        polygons("hat", canvas.ellipse(0, -1.1, 1.2, 0.55), canvas.ellipse(0, -0.62, 1.5, 0.14))
    sides = [sign for sign, worn in zip((-1, 1), face.earrings, strict=True) if worn]
    earrings = [canvas.ellipse(sign * 1.04, 0.38, 0.06, 0.08) for sign in sides]
    if earrings:
        polygons("ear_r", *earrings)
    _draw_body(face, canvas, shapes, skin_outline)
    parts = {name: np.asarray(mask) for name, mask in shapes.items()}
    return {name: mask for name, mask in parts.items() if mask.any()}


def _draw_body(face: Face, canvas: _Canvas, shapes: dict[str, Image.Image], skin_outline: list) -> None:
    """Neck, necklace and cloth; the body stays upright while the head rolls."""
    size, width = canvas.size, face.neck_half_width
    chin_x, chin_y = (value / size for value in canvas.local([0.0], [0.6])[0])
    bottom = face.shoulder_y + face.notch_depth + 0.03
    neck, neck_draw = canvas.blank()
    xs = [chin_x - width, chin_x + width, face.cx + width * 1.3, face.cx - width * 1.3]
    neck_draw.polygon(canvas.image(xs, [chin_y, chin_y, bottom, bottom]), fill=255)
    neck_draw.polygon(skin_outline, fill=0)
    if face.necklace:
        # A U-shaped chain low on the neck. The neck mask keeps the chain's upper half (neck_l is
        # painted before neck, so the merged map shows neck there) and leaves the lower half visible.
        band = max(2, round(0.014 * size))
        low = face.shoulder_y + face.notch_depth * 0.5
        box = canvas.image([face.cx - width * 1.1, face.cx + width * 1.1], [low - width * 0.9, low])
        pendant = canvas.image([face.cx - 0.012, face.cx + 0.012], [low - 0.01, low + 0.016])
        necklace, draw = canvas.blank()
        draw.arc(box, 15, 165, fill=255, width=band)
        draw.ellipse(pendant, fill=255)
        shapes["neck_l"] = necklace
        neck_draw.arc(box, 15, 165, fill=0, width=band // 2)
        neck_draw.ellipse(pendant, fill=0)
    shapes["neck"] = neck
    if face.cloth:  # shoulders falling away from the neck, with a round neckline cut out
        xs = np.linspace(-0.05, 1.05, 23)
        ys = face.shoulder_y + face.shoulder_slope * np.maximum(np.abs(xs - face.cx) - width * 1.2, 0) ** 1.6
        cloth, draw = canvas.blank()
        draw.polygon(canvas.image(np.r_[xs, 1.05, -0.05], np.r_[ys, 1.05, 1.05]), fill=255)
        xs = [face.cx - width * 1.3, face.cx + width * 1.3]
        draw.ellipse(canvas.image(xs, face.shoulder_y + np.array([-1, 1]) * face.notch_depth), fill=0)
        shapes["cloth"] = cloth


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], size: int) -> np.ndarray:
    """(size, size) float32 noise, bilinear-upsampled from a coarse grid of the given shape."""
    coarse = Image.fromarray(rng.standard_normal(shape).astype(np.float32))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR))


def paint(face: Face, label: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The image: each class region in the face's colour for it, with shading and noise on top."""
    size = label.shape[0]
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    # Light from one side: a gentle linear gradient over the whole picture.
    angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(0.02, 0.06)
    x, y = grid[None, :] - 0.5, grid[:, None] - 0.5
    shade = 1.0 + 2 * strength * (x * math.cos(angle) + y * math.sin(angle))
    # A rounded face: darker towards the rim of the face ellipse (face-local radius).
    dx, dy = grid[None, :] - face.cx, grid[:, None] - face.cy
    cos, sin = math.cos(face.roll), math.sin(face.roll)
    radius2 = ((dx * cos + dy * sin) / face.half_width) ** 2 + ((dy * cos - dx * sin) / face.half_height) ** 2
    skin_family = np.zeros(NUM_CLASSES, dtype=bool)
    skin_family[[CLASS_INDEX[name] for name in _SKIN_FAMILY]] = True
    shade = shade * np.where(skin_family[label], 1.0 - 0.1 * np.minimum(radius2, 1.4), 1.0)
    image = face.palette[label] * shade[..., None] + 6.0 * _smooth_noise(rng, (6, 6), size)[..., None]
    streaks = 14.0 * _smooth_noise(rng, (max(2, size // 12), size), size)  # hair strands run downwards
    image += np.where(label == CLASS_INDEX["hair"], streaks, 0.0)[..., None]
    canvas = _Canvas(face, size)
    irises, draw = canvas.blank()
    for sign in (-1, 1):
        draw.polygon(canvas.ellipse(sign * 0.4 + canvas.shift, -0.08, 0.07, 0.08), fill=255)
    iris = np.asarray(irises) > 0
    for name in ("l_eye", "r_eye"):
        # Sclera and iris around the eye's palette colour, weighted so the eye's mean stays on it.
        eye = label == CLASS_INDEX[name]
        fraction = (eye & iris).sum() / max(int(eye.sum()), 1)
        image[eye & ~iris] += fraction * face.eye_contrast
        image[eye & iris] -= (1.0 - fraction) * face.eye_contrast
    pixels = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if image_size != size:
        pixels = pixels.resize((image_size, image_size), Image.Resampling.BILINEAR)
    grain = rng.integers(-3, 4, size=(image_size, image_size, 1), dtype=np.int16)  # fine film grain
    return np.clip(np.asarray(pixels, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
