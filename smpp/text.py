"""Message text: choose and apply a data_coding, and cut long bodies into SMS parts.

Pure functions over ``str``/``bytes`` (no PDUs, no I/O). GSM 03.38 text is carried the SMPP
way, unpacked (one septet per octet); the GSM tables come from the ``gsm0338`` codec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

import gsm0338  # noqa: F401  (importing registers the "gsm03.38" codec)

__all__ = [
    "DC_BINARY",
    "DC_BINARY_ALT",
    "DC_DEFAULT",
    "DC_IA5",
    "DC_LATIN1",
    "DC_UCS2",
    "Segment",
    "TextEncodingError",
    "alphabet",
    "count_segments",
    "decode_text",
    "encode_text",
    "is_gsm7",
    "parse_udh",
    "septet_length",
    "split",
    "units",
]

DC_DEFAULT: Final = 0  # SMSC default alphabet: GSM 03.38, one septet per octet
DC_IA5: Final = 1  # IA5 / ASCII
DC_BINARY: Final = 2  # octet unspecified (8-bit binary)
DC_LATIN1: Final = 3  # ISO-8859-1
DC_BINARY_ALT: Final = 4  # octet unspecified (8-bit binary), the other code point
DC_UCS2: Final = 8  # UCS-2 (UTF-16 big-endian; we let surrogate pairs through)

# SMPP 3.4 single-byte character sets beyond latin-1 (decode only; they split like binary)
_SMPP_8BIT_CHARSETS: Final[dict[int, str]] = {6: "iso8859_5", 7: "iso8859_8"}

_ESC: Final = 0x1B
_MAX_PARTS: Final = 255
_MAX_PAYLOAD: Final = 0xFFFF  # message_payload TLV length is 16 bits

Alphabet = Literal["gsm7", "ucs2", "ascii", "latin1", "binary"]


class TextEncodingError(ValueError):
    """Text cannot be encoded/split as asked, or a UDH is malformed."""


# --------------------------------------------------------------------------- GSM tables
def _build_gsm_tables() -> tuple[dict[int, str], str, dict[int, str]]:
    """Derive fast lookup tables from the gsm0338 codec (the codec is the source of truth).

    Returns (encode map: ord(char) -> unpacked septets as a latin-1 str,
             base decode table: 256 chars indexed by octet, U+FFFD where undefined,
             extension decode map: septet after ESC -> char).
    """
    encode: dict[int, str] = {}
    base: list[str] = []
    for code in range(256):
        ch = ""
        if code < 0x80 and code != _ESC:
            ch = bytes([code]).decode("gsm03.38")
        base.append(ch if len(ch) == 1 else "\ufffd")
        if len(ch) == 1:
            encode[ord(ch)] = chr(code)
    extension: dict[int, str] = {}
    for code in range(0x80):
        try:
            ch = bytes([_ESC, code]).decode("gsm03.38")
        except UnicodeDecodeError:
            continue
        if len(ch) == 1:
            extension[code] = ch
            encode[ord(ch)] = chr(_ESC) + chr(code)
    # A bare ESC in the *text* must never be emitted: it would swallow the next septet.
    encode.pop(_ESC, None)
    return encode, "".join(base), extension


_GSM_ENCODE, _GSM_BASE, _GSM_EXT = _build_gsm_tables()
_GSM_CHARS: Final = frozenset(chr(c) for c in _GSM_ENCODE)
_GSM_EXT_CHARS: Final = frozenset(_GSM_EXT.values())
_ESC_SPLIT: Final = re.compile("\x1b([\\s\\S]?)")
_HIGH_SURROGATE: Final = re.compile(b"[\xd8-\xdb]")


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM 03.38 default alphabet or its extension."""
    return set(text) <= _GSM_CHARS


def _gsm_encode(text: str) -> bytes:
    if not is_gsm7(text):
        bad = next(c for c in text if c not in _GSM_CHARS)
        raise TextEncodingError(f"character {bad!r} is not in the GSM 03.38 alphabet")
    return text.translate(_GSM_ENCODE).encode("latin-1")


def _gsm_decode(data: bytes) -> str:
    """Lenient GSM 03.38 decode of unpacked septets (3GPP TS 23.038 receiver rules).

    ESC + a septet missing from the extension table shows the base-table character;
    ESC ESC (reserved for a further table) shows a space; a trailing lone ESC is dropped;
    octets >= 0x80 become U+FFFD.
    """
    raw = data.decode("latin-1")
    if "\x1b" not in raw:
        return raw.translate(_GSM_BASE)
    pieces = _ESC_SPLIT.split(raw)
    out: list[str] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            out.append(piece.translate(_GSM_BASE))
        elif piece == "":
            continue  # trailing lone ESC
        else:
            code = ord(piece)
            if code in _GSM_EXT:
                out.append(_GSM_EXT[code])
            elif code == _ESC:
                out.append(" ")
            else:
                out.append(_GSM_BASE[code])
    return "".join(out)


# --------------------------------------------------------------------------- data_coding
def alphabet(data_coding: int) -> Alphabet:
    """How the octets of a given data_coding are to be read (SMPP 3.4 5.2.19, TS 23.038 4).

    Values 0-15 follow SMPP; above that the GSM coding groups (general, message waiting,
    data coding/message class) are honoured. Unknown or compressed codings are "binary".
    """
    if data_coding == DC_DEFAULT:
        return "gsm7"
    if data_coding == DC_IA5:
        return "ascii"
    if data_coding == DC_LATIN1:
        return "latin1"
    if data_coding == DC_UCS2:
        return "ucs2"
    if data_coding < 0x10:
        return "binary"
    group = data_coding & 0xF0
    if group <= 0x70:  # general data coding / automatic deletion groups: 00xx, 01xx
        if data_coding & 0x20:  # compressed
            return "binary"
        bits = (data_coding >> 2) & 0x03
        return "gsm7" if bits == 0 else "ucs2" if bits == 2 else "binary"
    if group in (0xC0, 0xD0):
        return "gsm7"
    if group == 0xE0:
        return "ucs2"
    if group == 0xF0:
        return "binary" if data_coding & 0x04 else "gsm7"
    return "binary"


def encode_text(text: str, *, prefer: str = "auto") -> tuple[int, bytes]:
    """Encode ``text`` -> (data_coding, octets for short_message / message_payload).

    ``prefer="auto"``: GSM 03.38 (dc 0, unpacked) when every character fits, else UCS-2
    (dc 8). ``"gsm7"``, ``"ascii"``, ``"latin1"`` or ``"ucs2"`` force that coding and raise
    :class:`TextEncodingError` when the text cannot be represented in it.
    """
    if prefer == "auto":
        if is_gsm7(text):
            return DC_DEFAULT, _gsm_encode(text)
        return DC_UCS2, _ucs2_encode(text)
    if prefer == "gsm7":
        return DC_DEFAULT, _gsm_encode(text)
    if prefer == "ucs2":
        return DC_UCS2, _ucs2_encode(text)
    if prefer in ("latin1", "ascii"):
        codec, dc = ("latin-1", DC_LATIN1) if prefer == "latin1" else ("ascii", DC_IA5)
        try:
            return dc, text.encode(codec)
        except UnicodeEncodeError as exc:
            raise TextEncodingError(
                f"character {text[exc.start]!r} cannot be encoded as {prefer}"
            ) from None
    raise TextEncodingError(f"unknown encoding preference {prefer!r}")


def _ucs2_encode(text: str) -> bytes:
    try:
        return text.encode("utf-16-be")
    except UnicodeEncodeError as exc:  # lone surrogate in a Python str
        raise TextEncodingError(
            f"unpaired surrogate {text[exc.start]!r} cannot be encoded as UCS-2"
        ) from None


def decode_text(data: bytes, data_coding: int) -> str:
    """Decode message octets to text; never raises (bad input becomes U+FFFD).

    Binary codings decode as latin-1 so that every octet maps to one character and back;
    SMPP's Cyrillic (6) and Latin/Hebrew (7) use ISO-8859-5/-8. The multi-byte Asian codings
    (5, 10, 13, 14) are not interpreted: they come out like binary.
    """
    if data_coding in _SMPP_8BIT_CHARSETS:
        return data.decode(_SMPP_8BIT_CHARSETS[data_coding], "replace")
    kind = alphabet(data_coding)
    if kind == "gsm7":
        return _gsm_decode(data)
    if kind == "ucs2":
        return data.decode("utf-16-be", "replace")
    if kind == "ascii":
        return data.decode("ascii", "replace")
    return data.decode("latin-1")


def septet_length(text_or_bytes: str | bytes) -> int:
    """Septets a GSM 03.38 message takes (extension characters count 2).

    Bytes are taken as already-encoded unpacked septets. Text outside the GSM alphabet
    raises :class:`TextEncodingError`.
    """
    if isinstance(text_or_bytes, bytes | bytearray):
        return len(text_or_bytes)
    if not is_gsm7(text_or_bytes):
        _gsm_encode(text_or_bytes)  # raises with the offending character
    return len(text_or_bytes) + sum(1 for c in text_or_bytes if c in _GSM_EXT_CHARS)


def units(text_or_bytes: str | bytes, data_coding: int | None = None) -> int:
    """Length in the coding's own units: septets (GSM), UTF-16 code units (UCS-2), octets.

    For text with no ``data_coding`` the coding ``encode_text`` would pick is used.
    """
    if isinstance(text_or_bytes, bytes | bytearray):
        if data_coding is not None and alphabet(data_coding) == "ucs2":
            return (len(text_or_bytes) + 1) // 2
        return len(text_or_bytes)
    text = text_or_bytes
    if data_coding is None:
        data_coding = DC_DEFAULT if is_gsm7(text) else DC_UCS2
    kind = alphabet(data_coding)
    if kind == "gsm7":
        return septet_length(text)
    if kind == "ucs2":
        return len(_ucs2_encode(text)) // 2
    codec = "ascii" if kind == "ascii" else "latin-1"
    try:
        return len(text.encode(codec))
    except UnicodeEncodeError as exc:
        raise TextEncodingError(
            f"character {text[exc.start]!r} cannot be encoded as {kind}"
        ) from None


# --------------------------------------------------------------------------- segmentation
@dataclass(frozen=True, slots=True)
class Segment:
    """One submit_sm worth of a message.

    ``short_message``: octets for the short_message field (UDH included when ``udhi``), or,
    when ``payload`` is True, the whole body for the message_payload TLV (short_message
    then empty). ``udhi``: OR esm_class with 0x40. ``sar``: (sar_msg_ref_num,
    sar_total_segments, sar_segment_seqnum) for the SAR TLVs, when method="sar".
    """

    short_message: bytes
    udhi: bool = False
    sar: tuple[int, int, int] | None = None
    payload: bool = False


# (single-part limit, per-part capacity with 8-bit ref, with 16-bit ref), in octets of the body
_LIMITS: Final[dict[str, tuple[int, int, int]]] = {
    "gsm7": (160, 153, 152),  # septets, one per octet (unpacked)
    "ucs2": (140, 134, 132),
    "octet": (140, 134, 133),
}


def _boundaries_gsm(body: bytes, cap: int) -> list[int]:
    """Cut points for GSM septets, never between ESC and the septet it escapes."""
    cuts: list[int] = []
    start = 0
    i = 0
    n = len(body)
    while i < n:
        width = 2 if body[i] == _ESC and i + 1 < n else 1
        if i + width - start > cap:
            cuts.append(i)
            start = i
        i += width
    return cuts


def _boundaries_ucs2(body: bytes, cap: int) -> list[int]:
    """Cut points for UTF-16BE, on code-unit boundaries and never inside a surrogate pair."""
    cuts: list[int] = []
    start = 0
    i = 0
    n = len(body)
    while i < n:
        high = 0xD8 <= body[i] <= 0xDB
        width = 4 if high and i + 3 < n and 0xDC <= body[i + 2] <= 0xDF else 2
        if i + width - start > cap:
            cuts.append(i)
            start = i
        i += width
    return cuts


def split(
    body: bytes,
    data_coding: int,
    *,
    method: str = "udh",
    ref: int = 0,
    ref16: bool = False,
    max_single: int | None = None,
) -> list[Segment]:
    """Cut an encoded body into the segments to submit.

    ``body`` is already encoded (unpacked GSM septets, UCS-2, latin-1 or binary octets).
    It goes as one segment when it fits (``max_single`` octets, by default 160 for GSM,
    else 140; a smaller ``max_single`` also caps each part's body). Otherwise ``method``
    decides: "udh" (concatenation UDH IEI 0x00, or 0x08 when ``ref16``), "sar" (SAR TLV
    values, same per-part room as with a UDH since the SMSC adds one on the air), or
    "payload" (one segment for the message_payload TLV). Escape sequences, UCS-2 code units
    and surrogate pairs are never cut.
    """
    kind = alphabet(data_coding)
    limits = _LIMITS[kind if kind in ("gsm7", "ucs2") else "octet"]
    single = limits[0] if max_single is None else max_single
    if len(body) <= single:
        return [Segment(bytes(body))]
    if kind == "ucs2" and len(body) % 2:
        raise TextEncodingError("UCS-2 body has an odd number of octets")
    if method == "payload":
        if len(body) > _MAX_PAYLOAD:
            raise TextEncodingError(f"body of {len(body)} octets exceeds message_payload")
        return [Segment(bytes(body), payload=True)]
    if method not in ("udh", "sar"):
        raise TextEncodingError(f"unknown split method {method!r}")
    ref_limit = 0xFFFF if (ref16 or method == "sar") else 0xFF
    if not 0 <= ref <= ref_limit:
        raise TextEncodingError(f"concatenation reference {ref} out of range 0..{ref_limit}")
    wide = ref16 or ref > 0xFF
    cap = min(limits[2] if wide else limits[1], single)
    if kind == "ucs2":
        cap -= cap % 2  # whole code units only
    if cap < 4:  # room for at least one escape pair / surrogate pair
        raise TextEncodingError(f"max_single={max_single} leaves no room for a part")
    if kind == "gsm7" and _ESC in body:
        cuts = _boundaries_gsm(body, cap)
    elif kind == "ucs2" and _HIGH_SURROGATE.search(body[0::2]):
        cuts = _boundaries_ucs2(body, cap)
    else:  # every octet (GSM without escapes) or code unit (UCS-2 in the BMP) may be cut
        cuts = list(range(cap, len(body), cap))
    edges = [0, *cuts, len(body)]
    total = len(edges) - 1
    if total > _MAX_PARTS:
        raise TextEncodingError(f"message needs {total} parts, more than {_MAX_PARTS}")
    segments: list[Segment] = []
    for seq in range(1, total + 1):
        chunk = bytes(body[edges[seq - 1] : edges[seq]])
        if method == "sar":
            segments.append(Segment(chunk, sar=(ref, total, seq)))
        else:
            segments.append(Segment(_udh(ref, total, seq, ref16) + chunk, udhi=True))
    return segments


def _udh(ref: int, total: int, seq: int, ref16: bool) -> bytes:
    if ref16:
        return bytes((6, 0x08, 4, ref >> 8, ref & 0xFF, total, seq))
    return bytes((5, 0x00, 3, ref, total, seq))


def parse_udh(short_message: bytes) -> tuple[tuple[int, int, int] | None, bytes]:
    """Read the UDH at the head of a short_message sent with UDHI set.

    Returns ((ref, total, seq) from IEI 0x00 or 0x08 if present else None, the octets after
    the UDH). A concatenation IE with total 0 or seq outside 1..total is ignored, as TS 23.040
    tells receivers to. A UDH that does not parse raises :class:`TextEncodingError`.
    """
    if not short_message:
        raise TextEncodingError("UDHI set but short_message is empty")
    udhl = short_message[0]
    if 1 + udhl > len(short_message):
        raise TextEncodingError(f"UDH length {udhl} exceeds short_message")
    header = short_message[1 : 1 + udhl]
    concat: tuple[int, int, int] | None = None
    i = 0
    while i < len(header):
        if i + 2 > len(header):
            raise TextEncodingError("truncated information element in UDH")
        iei, iel = header[i], header[i + 1]
        data = header[i + 2 : i + 2 + iel]
        if len(data) != iel:
            raise TextEncodingError(f"information element 0x{iei:02x} overruns the UDH")
        if iei == 0x00 or iei == 0x08:
            want = 3 if iei == 0x00 else 4
            if iel != want:
                raise TextEncodingError(f"concatenation IE 0x{iei:02x} has length {iel}")
            if iei == 0x00:
                ref, total, seq = data[0], data[1], data[2]
            else:
                ref, total, seq = (data[0] << 8) | data[1], data[2], data[3]
            if concat is None and total >= 1 and 1 <= seq <= total:
                concat = (ref, total, seq)
        i += 2 + iel
    return concat, bytes(short_message[1 + udhl :])


def count_segments(text: str) -> tuple[int, int]:
    """(data_coding ``encode_text`` picks, number of SMS parts) for billing and length rules."""
    data_coding, body = encode_text(text)
    if not body:
        return data_coding, 1
    return data_coding, len(split(body, data_coding))
