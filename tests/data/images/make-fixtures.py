#!/usr/bin/env python3
"""Writes the small PNG fixtures of this folder (run it from here).

They are made without libpng on purpose, so the tests also see a PNG
writer other than the one nbbatch links.  Each image is 8x20 RGB: the top
16 rows have the prompt's colour (the first three bytes of SHA-256 of its
UTF-8 bytes, complemented for a thought image) like the simulator's, and
carries "parameters" and "nbbatch" iTXt chunks right after IHDR like
nbbatch's own output.
"""
import hashlib
import json
import struct
import zlib

W, H, BAND = 8, 20, 16


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + \
        struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def itxt(key, text):
    return chunk(b"iTXt", key.encode() + b"\0\0\0\0\0" + text.encode())


def colour(prompt, thought=False):
    rgb = hashlib.sha256(prompt.encode()).digest()[:3]
    return bytes(255 - b for b in rgb) if thought else rgb


def png(rgb, prompt=None, job_id=None, damage=False):
    rows = b""
    for y in range(H):
        px = rgb if y < BAND else bytes([128, 128, 128])
        rows += b"\0" + px * W
    idat = zlib.compress(rows, 9)
    out = b"\x89PNG\r\n\x1a\n"
    out += chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
    if prompt is not None:
        meta = {"job_id": job_id, "batch": "fixtures", "prompt": prompt,
                "model": "gemini-2.5-flash-image", "aspect_ratio": None,
                "image_size": None, "response_id": None,
                "model_version": None,
                "usage": {"prompt_tokens": 0, "output_tokens": 0,
                          "thought_tokens": 0, "total_tokens": 0},
                "source_format": "png", "width": W, "height": H}
        out += itxt("parameters", prompt + "\nModel: gemini-2.5-flash-image"
                    ", Size: %dx%d, Generator: nbbatch" % (W, H))
        out += itxt("nbbatch", json.dumps(meta, ensure_ascii=False,
                                          separators=(",", ":")))
    idat_chunk = bytearray(chunk(b"IDAT", idat))
    if damage:
        idat_chunk[12] ^= 0x20
    out += bytes(idat_chunk) + chunk(b"IEND", b"")
    return out


FOX = "a fox in the snow"
KITSUNE = "\u96ea\u306e\u4e2d\u306e\u72d0 \U0001F98A"
FILES = {
    "good-fox.png": png(colour(FOX), FOX, 1),
    "good-kitsune.png": png(colour(KITSUNE), KITSUNE, 2),
    "dup-fox.png": png(colour(FOX), FOX, 1),
    "thought.png": png(colour("a red bicycle", True), "a red bicycle", 3),
    "wrong-colour.png": png(colour(FOX), "a blue whale", 4),
    "no-chunk.png": png(colour(FOX)),
    "corrupt.png": png(colour(FOX), FOX, 5, damage=True),
}

for name, data in FILES.items():
    with open(name, "wb") as f:
        f.write(data)
with open("prompts.txt", "w", encoding="utf-8") as f:
    f.write("# the two good fixtures\n" + FOX + "\n\n" + KITSUNE + "\n")
