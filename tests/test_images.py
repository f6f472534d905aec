import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import encode_bytes, rng_image
from pixarc.errors import InputError
from pixarc.images import pixels_sha256, probe_and_load


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, depth: int, color: int, rows: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")


def rejected(data: bytes, **kw) -> str:
    with pytest.raises(InputError) as e:
        probe_and_load(data, **kw)
    return e.value.reason


def test_zero_byte():
    assert rejected(b"") == "empty"


def test_not_an_image():
    assert rejected(b"hello, this is a text file\n" * 10) == "not_an_image"


def test_truncated_png():
    data = encode_bytes(rng_image("RGB", (64, 64)), "PNG")
    assert rejected(data[: len(data) // 2]) == "truncated"


def test_huge_dimensions_refused_before_decoding():
    bomb = raw_png(100_000, 100_000, 8, 0, b"")  # claims 10^10 pixels, carries none
    assert rejected(bomb) == "too_large"
    assert rejected(encode_bytes(rng_image("L", (100, 100)), "PNG"), max_pixels=5000) == "too_large"


def test_format_allowlist():
    data = encode_bytes(rng_image("RGB"), "BMP")
    assert rejected(data, formats=frozenset({"PNG"})) == "format_not_allowed"


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
def test_canonical_modes_kept_exactly(mode):
    im = rng_image(mode)
    src = probe_and_load(encode_bytes(im, "PNG"))
    assert src.info.pixel_faithful and src.image.mode == mode
    assert src.pixels_sha256 == pixels_sha256(im)
    assert src.info.bit_depth == (16 if mode == "I;16" else 8)


def test_palette_expanded_with_note():
    im = rng_image("RGB").quantize(16)
    src = probe_and_load(encode_bytes(im, "PNG"))
    assert src.image.mode == "RGB" and any("palette" in n for n in src.info.notes)
    assert src.image.tobytes() == im.convert("RGB").tobytes()


def test_palette_with_transparency_becomes_rgba():
    im = rng_image("RGB").quantize(16)
    src = probe_and_load(encode_bytes(im, "PNG", transparency=0))
    assert src.image.mode == "RGBA"


def test_sixteen_bit_rgb_is_not_truncated_but_kept_as_original():
    rows = b"".join(b"\x00" + np.arange(3 * 4, dtype=">u2").tobytes() for _ in range(3))
    src = probe_and_load(raw_png(4, 3, 16, 2, rows))
    assert not src.info.pixel_faithful and src.image is None
    assert any("16-bit" in n for n in src.info.notes)


def test_cmyk_kept_as_original():
    im = Image.new("CMYK", (20, 10), (10, 20, 30, 40))
    for fmt in ("JPEG", "TIFF"):
        src = probe_and_load(encode_bytes(im, fmt))
        assert not src.info.pixel_faithful and src.info.source_mode == "CMYK"


def test_animation_kept_as_original():
    frames = [rng_image("RGB", seed=i).quantize(8) for i in range(3)]
    buf = encode_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    src = probe_and_load(buf)
    assert src.info.frames == 3 and not src.info.pixel_faithful


def test_exif_and_icc_are_captured():
    im = rng_image("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    src = probe_and_load(encode_bytes(im, "JPEG", exif=exif.tobytes(), icc_profile=b"fake-icc"))
    assert src.exif and src.icc_profile == b"fake-icc"
    assert any("orientation 6" in n for n in src.info.notes)


def test_sha256_is_of_the_file_bytes():
    import hashlib

    data = encode_bytes(rng_image("RGB"), "PNG")
    assert probe_and_load(data).sha256 == hashlib.sha256(data).hexdigest()
