"""Read the pieces of a SentencePiece ``.model`` file without sentencepiece or protobuf.

A ``.model`` is a serialized ``ModelProto`` whose field 1 repeats ``SentencePiece {string piece = 1;
float score = 2; Type type = 3}`` (types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
6 byte). Only that much is decoded: enough to see which pieces carry text and how many bytes each would
count.
"""

from __future__ import annotations

from dataclasses import dataclass

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # SentencePiece's whitespace marker


@dataclass
class Piece:
    piece: str
    type: int = NORMAL

    def text_bytes(self) -> int:
        """Bytes the piece's text stands for, as the usual byte table counts them (the leading-space marker
        is one space byte)."""
        if self.type in (UNKNOWN, CONTROL, UNUSED):
            return 0
        if self.type == BYTE:
            return 1
        return len(self.piece.replace(SPACE, " ").encode("utf-8"))


class ModelError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf):
            raise ModelError("truncated varint")
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ModelError("varint too long")


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ModelError(f"unsupported wire type {wt}")
        if i > len(buf):
            raise ModelError("truncated field")
        yield num, wt, v


def read_pieces(data: bytes) -> list[Piece]:
    pieces = []
    for num, wt, v in _fields(data):
        if num != 1 or wt != 2:
            continue
        p = Piece("")
        for n2, w2, v2 in _fields(v):
            if n2 == 1 and w2 == 2:
                p.piece = v2.decode("utf-8", errors="replace")
            elif n2 == 3 and w2 == 0:
                p.type = v2
        pieces.append(p)
    if not pieces:
        raise ModelError("no pieces: not a SentencePiece model")
    return pieces
