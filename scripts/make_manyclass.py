#!/usr/bin/env python3
"""Generate a many-class synthetic image corpus, harder than fixtures/ (numpy only).

Usage: scripts/make_manyclass.py OUT_DIR [--classes 300] [--per-class 20] [--size 32]
                                 [--seed 0] [--contact FILE.png]

Every class has its own style, drawn from a class-seeded generator: a glyph made of 2-3
primitives (filled polygon, stroked polyline, ring or ellipse, bar) with one colour each,
taken from a small shared set of hues so that colour alone does not name the class. Every
image varies the pose (rotation about a class orientation, scale, translation; a few are
mirrored), jitters the colours, draws a random background (tinted gradient with clutter:
lines and blobs in other colours, sometimes one line across the glyph) and adds pixel noise.
Shapes are drawn at twice the size and box-filtered down, so edges are anti-aliased.

Writes OUT_DIR/images/<class>/<nnn>.png (RGB, 8 bit) and, last, OUT_DIR/manifest.csv with
header path,label,split (paths relative to OUT_DIR). Splits: a seeded shuffle of the classes;
the first two thirds are training classes, of which 3 images per class go to `val` and the
rest to `train`; the remaining third are `test` classes, unseen in training and validation.
The output depends only on the options (each class and each image has its own generator).
--contact writes a sheet (one row per class, first 16 classes) to look at.
"""
import argparse
import csv
import math
import os
import struct
import sys
import time
import zlib

import numpy as np

VAL_PER_CLASS = 3
# Hues shared by all classes: many classes use the same colours, so shape carries the identity.
HUES = np.array([0.0, 0.08, 0.15, 0.3, 0.45, 0.55, 0.62, 0.72, 0.82, 0.92])


def hsv_to_rgb(h, s, v):
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def write_png(path, rgb):
    """An 8-bit RGB PNG (filter 0 on every row), written to a temporary name and renamed."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)


# ---- primitives: each is a dict in glyph coordinates ([-1, 1]², y down); mask(u, v) -> bool

def seg_dist(u, v, a, b):
    """Distance from every point (u, v) to the segment a-b."""
    d = b - a
    den = float(d @ d) or 1e-9
    t = np.clip(((u - a[0]) * d[0] + (v - a[1]) * d[1]) / den, 0.0, 1.0)
    return np.hypot(u - (a[0] + t * d[0]), v - (a[1] + t * d[1]))


def poly_mask(u, v, pts):
    """Even-odd rule point-in-polygon."""
    inside = np.zeros(u.shape, bool)
    n = len(pts)
    for i in range(n):
        (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def mask_of(prim, u, v):
    kind = prim["kind"]
    if kind == "polygon":
        return poly_mask(u, v, prim["pts"])
    if kind == "stroke":
        pts, w = prim["pts"], prim["width"]
        m = np.zeros(u.shape, bool)
        for a, b in zip(pts[:-1], pts[1:]):
            m |= seg_dist(u, v, a, b) <= w
        return m
    cx, cy = prim["centre"]
    c, s = math.cos(prim["angle"]), math.sin(prim["angle"])
    x, y = (u - cx) * c + (v - cy) * s, -(u - cx) * s + (v - cy) * c
    if kind == "bar":
        return (np.abs(x) <= prim["a"]) & (np.abs(y) <= prim["b"])
    r = (x / prim["a"]) ** 2 + (y / prim["b"]) ** 2
    if kind == "ring":
        return (r <= 1.0) & (r >= prim["inner"] ** 2)
    return r <= 1.0  # ellipse


def random_primitive(rng, kind, big):
    """One primitive; `big` ones carry the glyph, the others are details on it."""
    extent = 0.8 if big else 0.45
    centre = rng.uniform(-0.35, 0.35, 2) if big else rng.uniform(-0.55, 0.55, 2)
    if kind == "polygon":
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.35, 1.0, n) * extent
        pts = centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
        return {"kind": kind, "pts": pts}
    if kind == "stroke":
        n = int(rng.integers(2, 5))
        pts = [centre + rng.uniform(-extent, extent, 2)]
        for _ in range(n):
            step = rng.uniform(0.4, 1.0) * extent
            turn = rng.uniform(0, 2 * np.pi)
            pts.append(np.clip(pts[-1] + step * np.array([math.cos(turn), math.sin(turn)]), -0.95, 0.95))
        return {"kind": kind, "pts": np.array(pts), "width": rng.uniform(0.06, 0.16)}
    common = {"kind": kind, "centre": centre, "angle": rng.uniform(0, np.pi)}
    if kind == "bar":
        return {**common, "a": rng.uniform(0.4, 1.0) * extent, "b": rng.uniform(0.07, 0.25) * extent}
    if kind == "ring":
        a = rng.uniform(0.5, 1.0) * extent
        return {**common, "a": a, "b": a * rng.uniform(0.6, 1.0), "inner": rng.uniform(0.45, 0.75)}
    return {**common, "a": rng.uniform(0.3, 1.0) * extent, "b": rng.uniform(0.25, 0.8) * extent}


def class_style(seed, index):
    """The glyph (2-3 primitives, each with a colour) of one class."""
    rng = np.random.default_rng([seed, index, 0xC1A55])
    n = int(rng.integers(2, 4))
    kinds = ["polygon", "stroke", "ring", "ellipse", "bar"]
    prims = []
    for i in range(n):
        kind = kinds[int(rng.integers(len(kinds)))]
        prim = random_primitive(rng, kind, big=(i == 0))
        hue = HUES[int(rng.integers(len(HUES)))] + rng.uniform(-0.02, 0.02)
        prim["colour"] = hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        prims.append(prim)
    # A class-wide preferred orientation, so the pose varies around it.
    return {"prims": prims, "angle": rng.uniform(-np.pi, np.pi), "mirror": bool(rng.integers(2))}


def render(style, seed, index, item, size):
    rng = np.random.default_rng([seed, index, item, 0x1A6E])
    big = 2 * size
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    # Pixel grid in [-1, 1]² (y down).
    px = (xx + 0.5) / big * 2 - 1
    py = (yy + 0.5) / big * 2 - 1

    # Background: a muted tint with a linear gradient.
    base = hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.85))
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (px * math.cos(direction) + py * math.sin(direction)) * rng.uniform(0.0, 0.15)
    img = np.clip(base[None, None, :] + ramp[..., None], 0, 1).astype(np.float32)

    def paint(mask, colour):
        img[mask] = colour

    def clutter_item(thin):
        colour = hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))
        if thin or rng.uniform() < 0.5:
            a, b = rng.uniform(-1.1, 1.1, 2), rng.uniform(-1.1, 1.1, 2)
            paint(seg_dist(px, py, a, b) <= rng.uniform(0.015, 0.05), colour)
        else:
            c = rng.uniform(-1, 1, 2)
            r = rng.uniform(0.06, 0.25, 2)
            paint(((px - c[0]) / r[0]) ** 2 + ((py - c[1]) / r[1]) ** 2 <= 1, colour)

    for _ in range(int(rng.integers(2, 6))):
        clutter_item(thin=False)

    # Pose: glyph coordinates of every pixel by the inverse transform.
    angle = style["angle"] + rng.normal(0, 0.35)
    scale = rng.uniform(0.65, 1.05)
    shift = rng.uniform(-0.18, 0.18, 2)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = px - shift[0], py - shift[1]
    u = (dx * c + dy * s) / scale
    v = (-dx * s + dy * c) / scale
    if style["mirror"] and rng.uniform() < 0.15:
        u = -u
    brightness = rng.uniform(0.8, 1.15)
    for prim in style["prims"]:
        colour = prim["colour"] * brightness + rng.normal(0, 0.06, 3)
        paint(mask_of(prim, u, v), np.clip(colour, 0, 1))

    if rng.uniform() < 0.3:
        clutter_item(thin=True)

    # Box-filter down to the output size, then noise.
    small = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    small += rng.normal(0, rng.uniform(0.02, 0.07), small.shape).astype(np.float32)
    return (np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8)


def splits_for(seed, classes, per_class):
    """split[class][item]: train / val for two thirds of the classes, test for the rest."""
    rng = np.random.default_rng([seed, 0x5B117])
    order = rng.permutation(classes)
    n_train = int(round(classes * 2 / 3))
    out = {}
    for rank, cls in enumerate(order):
        if rank < n_train:
            val = set(rng.choice(per_class, size=min(VAL_PER_CLASS, per_class - 2), replace=False).tolist())
            out[int(cls)] = ["val" if i in val else "train" for i in range(per_class)]
        else:
            out[int(cls)] = ["test"] * per_class
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contact", help="also write a contact sheet PNG (16 classes x up to 16 images)")
    args = parser.parse_args()
    if args.classes < 3 or args.per_class < VAL_PER_CLASS + 2 or args.size < 8:
        sys.exit("need --classes >= 3, --per-class >= 5 and --size >= 8")
    start = time.time()
    width = max(3, len(str(args.classes - 1)))
    splits = splits_for(args.seed, args.classes, args.per_class)
    rows = []
    sheet_rows = []
    for cls in range(args.classes):
        label = f"c{cls:0{width}d}"
        folder = os.path.join(args.out, "images", label)
        os.makedirs(folder, exist_ok=True)
        style = class_style(args.seed, cls)
        tiles = []
        for item in range(args.per_class):
            pixels = render(style, args.seed, cls, item, args.size)
            rel = f"images/{label}/{item:03d}.png"
            write_png(os.path.join(args.out, rel), pixels)
            rows.append((rel, label, splits[cls][item]))
            if args.contact and cls < 16 and item < 16:
                tiles.append(pixels)
        if tiles:
            sheet_rows.append(np.concatenate(tiles, axis=1))
    tmp = os.path.join(args.out, ".manifest.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    os.replace(tmp, os.path.join(args.out, "manifest.csv"))
    counts = {s: sum(1 for r in rows if r[2] == s) for s in ("train", "val", "test")}
    print(f"wrote {len(rows)} images ({counts['train']} train, {counts['val']} val, {counts['test']} test) "
          f"of {args.classes} classes and {os.path.join(args.out, 'manifest.csv')} in {time.time() - start:.1f} s")
    if args.contact:
        width_px = max(r.shape[1] for r in sheet_rows)
        sheet = np.concatenate([np.pad(r, ((0, 2), (0, width_px - r.shape[1]), (0, 0))) for r in sheet_rows])
        write_png(args.contact, sheet.repeat(3, axis=0).repeat(3, axis=1))
        print(f"contact sheet: {args.contact}")


if __name__ == "__main__":
    main()
