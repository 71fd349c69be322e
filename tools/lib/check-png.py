#!/usr/bin/env python3
"""Checks a PNG written by tools/plot (used by tools/test.sh; standard library only).

    check-png.py FILE WIDTH HEIGHT [NAME=R,G,B:MIN_PIXELS:MIN_COLUMNS_PERCENT]...

Verifies the signature, every chunk's CRC, the IHDR size (8-bit RGB or RGBA), decodes the
image data (all five PNG row filters), and for each NAME counts the pixels of exactly that
colour and the image columns holding at least one: a drawn series line spans much of the
width, a legend swatch alone does not. A MIN of 0 demands that the colour be absent.
Prints the counts; exits 1 on the first failed check.
"""

import struct
import sys
import zlib


def fail(message):
    print("check-png: " + message)
    sys.exit(1)


def decode(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail("bad PNG signature")
    pos, chunks = 8, []
    while pos < len(data):
        if pos + 8 > len(data):
            fail("truncated chunk header at byte %d" % pos)
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            fail("truncated %r chunk" % kind)
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            fail("CRC mismatch in %r chunk" % kind)
        chunks.append((kind, body))
        pos += 12 + length
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        fail("chunks must start with IHDR and end with IEND")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if depth != 8 or colour not in (2, 6) or interlace != 0:
        fail("expected 8-bit RGB/RGBA, not interlaced (depth %d, colour type %d)"
             % (depth, colour))
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        fail("image data is %d bytes, expected %d" % (len(raw), height * (stride + 1)))
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            up_left = previous[i - bpp] if i >= bpp else 0
            if kind == 0:
                predictor = 0
            elif kind == 1:
                predictor = left
            elif kind == 2:
                predictor = up
            elif kind == 3:
                predictor = (left + up) // 2
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
            else:
                fail("unknown filter type %d on row %d" % (kind, y))
            line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, bpp, rows


def main():
    if len(sys.argv) < 4:
        fail("usage: check-png.py FILE WIDTH HEIGHT [NAME=R,G,B:MIN_PIXELS:MIN_COLUMNS_%]...")
    with open(sys.argv[1], "rb") as handle:
        width, height, bpp, rows = decode(handle.read())
    if (width, height) != (int(sys.argv[2]), int(sys.argv[3])):
        fail("IHDR says %dx%d, expected %sx%s" % (width, height, sys.argv[2], sys.argv[3]))
    print("check-png: %dx%d, %d bytes per pixel" % (width, height, bpp))
    for spec in sys.argv[4:]:
        name, rest = spec.split("=", 1)
        rgb_text, min_pixels, min_columns_pct = rest.split(":")
        rgb = bytes(int(c) for c in rgb_text.split(","))
        pixels, columns = 0, set()
        for row in rows:
            for x in range(width):
                if row[x * bpp:x * bpp + 3] == rgb:
                    pixels += 1
                    columns.add(x)
        percent = 100 * len(columns) / width
        print("check-png: %s %s: %d pixels in %d columns (%.0f%% of the width)"
              % (name, rgb_text, pixels, len(columns), percent))
        if int(min_pixels) == 0:
            if pixels:
                fail("%s: colour %s must be absent" % (name, rgb_text))
        elif pixels < int(min_pixels) or percent < float(min_columns_pct):
            fail("%s: need >= %s pixels in >= %s%% of the columns"
                 % (name, min_pixels, min_columns_pct))
    print("check-png: ok")


if __name__ == "__main__":
    main()
