import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from pixarc.container import MAGIC, Container, pack, unpack
from pixarc.errors import ContainerError


def sample(**kw) -> Container:
    base = dict(
        codec_id="png", format_version=1, width=3, height=2, mode="RGB", bit_depth=8,
        source_sha256="ab" * 32, pixels_sha256="cd" * 32, weights_sha256="",
        meta={"params": {"compress_level": 9}, "lossless": True},
        sections={"DATA": b"payload-bytes", "ICCP": b"icc"},
    )
    base.update(kw)
    return Container(**base)


def test_roundtrip_keeps_every_field():
    c = sample()
    out = unpack(pack(c))
    assert out == c
    head = unpack(pack(c), header_only=True)
    assert head.sections == {} and head.codec_id == "png" and head.pixels_sha256 == "cd" * 32


def test_empty_hashes_roundtrip_as_empty():
    out = unpack(pack(sample(pixels_sha256="", weights_sha256="")))
    assert out.pixels_sha256 == "" and out.weights_sha256 == ""


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:8] + struct.pack(">H", 99) + b[10:], "container version"),
        (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "header CRC"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:-3] + bytes([b[-3] ^ 0xFF]) + b[-2:], "CRC mismatch"),
        (lambda b: b"", "truncated"),
    ],
)
def test_corruptions_raise_typed_errors(mutate, message):
    blob = pack(sample())
    with pytest.raises(ContainerError, match=message):
        unpack(mutate(blob))


def test_missing_data_section_is_refused():
    with pytest.raises(ContainerError):
        pack(sample(sections={"ICCP": b"x"}))


def test_claimed_huge_section_allocates_nothing():
    blob = pack(sample(sections={"DATA": b"x"}))
    # rewrite the DATA length to 2**62 and fix nothing else: must be "truncated", not MemoryError
    idx = blob.rindex(b"DATA")
    forged = blob[: idx + 4] + struct.pack(">Q", 1 << 62) + blob[idx + 12 :]
    with pytest.raises(ContainerError, match="truncated"):
        unpack(forged)


def test_implausible_geometry_refused():
    with pytest.raises(ContainerError, match="geometry"):
        unpack(pack(sample(width=0)))


def test_magic_is_png_style():
    assert MAGIC[0] == 0x89 and MAGIC[4:] == b"\r\n\x1a\n"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_container_error(data):
    with pytest.raises(ContainerError):  # never another exception, never a "valid" container
        unpack(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7), st.integers(min_value=0))
def test_bit_flips_and_truncations_are_caught(pos, bit, cut):
    blob = pack(sample())
    pos %= len(blob)
    flipped = blob[:pos] + bytes([blob[pos] ^ (1 << bit)]) + blob[pos + 1 :]
    with pytest.raises(ContainerError):
        unpack(flipped)  # every byte is covered by the magic, a CRC or a length check
    cut %= len(blob)
    with pytest.raises(ContainerError):
        unpack(blob[:cut])


def test_header_crc_covers_header_bytes():
    blob = pack(sample())
    hlen = struct.unpack(">I", blob[10:14])[0]
    crc = struct.unpack(">I", blob[14 + hlen : 18 + hlen])[0]
    assert crc == zlib.crc32(blob[: 14 + hlen])
