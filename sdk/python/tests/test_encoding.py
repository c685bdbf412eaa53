"""The payload encoding, without a server: what the SDK guarantees about bytes."""

from __future__ import annotations

import base64
import json

import pytest

from jobq import _encoding


def _embed(payload: bytes) -> str:
    # What the server writes: JSON verbatim, other UTF-8 as a string,
    # anything else as base64 with a sibling field.
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        b64 = base64.b64encode(payload).decode()
        return '{"job_id":"x","payload":' + json.dumps(b64) + ',"payload_encoding":"base64"}'
    if _encoding.is_json(text):
        return '{"job_id":"x","payload":' + text + ',"queue":"q"}'
    return '{"job_id":"x","payload":' + json.dumps(text, ensure_ascii=False) + "}"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"z": 1,   "a": [1, 2.50, "x"]}',
        b"\t[1,2]\n",
        b"true",
        b"-0.0e10",
        b"hello world",
        b'say "hi"\n\ttab',
        "ünïcødé \u2028".encode(),
        b"\x00\xff\xfe",
        b'"tab\\u0009escaped"',
        b'"\\u0041"',
        b'"[1]"',
        b"",
        b"NaN",
    ],
)
def test_round_trip(payload: bytes) -> None:
    assert _encoding.payload_of(_embed(payload)) == payload


def test_the_one_ambiguous_case_decodes_as_text() -> None:
    # `"abc"` (a JSON string) and `abc` (text) are embedded alike.
    assert _encoding.payload_of(_embed(b'"abc"')) == b"abc"


def test_absent_field_is_none() -> None:
    assert _encoding.payload_of('{"job_id":"x"}') is None


def test_raw_fields_keep_the_text() -> None:
    f = _encoding.raw_fields('{"a": {"b" : [1, 2]} , "c":"d"}')
    assert f == {"a": ' {"b" : [1, 2]} ', "c": '"d"'}


def test_encode_value() -> None:
    assert _encoding.encode_value(b"\x00") == (b"\x00", None)
    assert _encoding.encode_value("é") == ("é".encode(), "text/plain; charset=utf-8")
    assert _encoding.encode_value({"a": [1, None]}) == (b'{"a":[1,null]}', "application/json")
