"""Payload bytes <-> the JSON answers of the server (the API's payload encoding).

Where the server puts a payload or result into a JSON answer, bytes that parse
as JSON are embedded as that JSON text, verbatim; other UTF-8 as a JSON string;
anything else as base64 with a sibling ``"<field>_encoding": "base64"``.

To give back the exact bytes, the answer is not only parsed: the raw text of
the payload field is cut out of the body (the server copies JSON payloads into
it unchanged), so ``{"b": 1,  "a": 2}`` comes back with its spacing and key
order. The one case the answer cannot tell apart: a payload that is itself a
JSON string literal whose content is not JSON (the five bytes ``"abc"``) is
embedded exactly like the text ``abc``; it decodes as ``abc``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; the server's JSON does not.
    raise ValueError(f"not JSON: {name}")


def is_json(text: str) -> bool:
    """Whether the server would take ``text`` for JSON (strict JSON, no NaN)."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return False
    return True


def encode_value(value: Any) -> tuple[bytes, str | None]:
    """A payload or result as bytes and its content type.

    bytes and str are sent as they are; anything else as compact JSON.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, str):
        return value.encode("utf-8"), "text/plain; charset=utf-8"
    return (
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
        "application/json",
    )


def raw_fields(body: str) -> dict[str, str]:
    """The top-level members of a JSON object, each as its raw text.

    Whitespace around a value is kept: the server embeds a JSON payload
    verbatim, leading and trailing whitespace included.
    """
    out: dict[str, str] = {}
    i = _skip_ws(body, 0)
    if i >= len(body) or body[i] != "{":
        raise ValueError("not a JSON object")
    i = _skip_ws(body, i + 1)
    if i < len(body) and body[i] == "}":
        return out
    while True:
        if i >= len(body) or body[i] != '"':
            raise ValueError("expected a member name")
        key, i = _DECODER.raw_decode(body, i)
        i = _skip_ws(body, i)
        if i >= len(body) or body[i] != ":":
            raise ValueError("expected ':'")
        start = i + 1
        _, end = _DECODER.raw_decode(body, _skip_ws(body, start))
        stop = _skip_ws(body, end)
        if stop >= len(body) or body[stop] not in ",}":
            raise ValueError("expected ',' or '}'")
        out[str(key)] = body[start:stop]
        if body[stop] == "}":
            return out
        i = _skip_ws(body, stop + 1)


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def decode_embedded(raw: str, encoding: str | None) -> bytes:
    """The bytes behind one embedded payload field (its raw JSON text)."""
    text = raw.strip(_WS)
    if encoding == "base64":
        return base64.b64decode(json.loads(text), validate=True)
    if text.startswith('"'):
        inner = json.loads(text)
        if not isinstance(inner, str):  # pragma: no cover - a string literal
            raise ValueError("payload string did not decode to a string")
        if is_json(inner) or _server_escape(inner) != raw:
            # The server would have embedded such text differently: the
            # payload was this JSON string literal, verbatim.
            return raw.encode("utf-8")
        return inner.encode("utf-8")
    return raw.encode("utf-8")


def _server_escape(s: str) -> str:
    # The server escapes strings as serde_json does, which matches Python's
    # json.dumps without ASCII escaping: `"`, `\`, control characters.
    return json.dumps(s, ensure_ascii=False)


def payload_of(body: str, field: str = "payload") -> bytes | None:
    """The bytes of ``field`` in a JSON answer, or None when it is absent."""
    fields = raw_fields(body)
    raw = fields.get(field)
    if raw is None:
        return None
    enc_raw = fields.get(f"{field}_encoding")
    encoding = json.loads(enc_raw) if enc_raw is not None else None
    return decode_embedded(raw, encoding if isinstance(encoding, str) else None)


def chunk_of(data: str) -> bytes:
    """The bytes of one streamed progress chunk (an SSE ``data`` JSON value)."""
    return decode_embedded(data, None)
