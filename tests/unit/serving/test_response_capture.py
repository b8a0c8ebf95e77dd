"""Response capture: the text the refusal judge reads, from JSON and SSE bodies."""

from __future__ import annotations

import json

from rosi_vllm.serving.response_capture import ResponseCapture


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_streaming_capture_collects_text_and_strips_injected_usage():
    cap = ResponseCapture(streaming=True, strip_usage_event=True)
    stream = (_sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
              + _sse({"choices": [{"index": 0, "delta": {"content": "I can"}}]})
              + _sse({"choices": [{"index": 0, "delta": {"content": "not help"}}]})
              + _sse({"choices": [], "usage": {"completion_tokens": 2}}) + b"data: [DONE]\n\n")
    out = b""
    for i in range(0, len(stream), 7):  # events split across arbitrary chunk boundaries
        out += cap.feed(stream[i:i + 7])
    out += cap.finish()
    assert cap.texts == {0: "I cannot help"} and cap.completion_tokens == 2 and cap.tokens_exact
    assert b"usage" not in out and out.endswith(b"data: [DONE]\n\n") and b"not help" in out


def test_streaming_capture_keeps_usage_the_client_asked_for():
    cap = ResponseCapture(streaming=True, strip_usage_event=False)
    event = _sse({"choices": [], "usage": {"completion_tokens": 3}})
    assert cap.feed(event) == event


def test_json_capture_reads_completion_and_chat_bodies():
    body = json.dumps({"choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}],
                       "usage": {"completion_tokens": 5}}).encode()
    cap = ResponseCapture(streaming=False)
    assert cap.feed(body[:10]) + cap.feed(body[10:]) == body
    cap.finish()
    assert cap.texts == {0: "a", 1: "b"} and cap.completion_tokens == 5
    cap = ResponseCapture(streaming=False)
    cap.feed(json.dumps({"choices": [{"index": 0, "message": {"content": "hi"}}]}).encode())
    cap.finish()
    assert cap.texts == {0: "hi"}


def test_long_streams_keep_the_opening_and_exact_counts_without_decoding_every_event():
    cap = ResponseCapture(streaming=True, strip_usage_event=True, text_limit=20)
    events = [_sse({"choices": [{"index": 0, "text": f"word{i} "}]}) for i in range(50)]
    events.append(_sse({"choices": [], "usage": {"completion_tokens": 50}}))
    out = b"".join(cap.feed(e) for e in events) + cap.feed(b"data: [DONE]\n\n") + cap.finish()
    assert cap.texts[0] == "word0 word1 word2 wo" and cap.completion_tokens == 50 and cap.tokens_exact
    assert b'"usage"' not in out and out.count(b"word") == 50
    fallback = ResponseCapture(streaming=True, text_limit=20)
    for e in events[:50]:
        fallback.feed(e)
    fallback.finish()
    assert fallback.completion_tokens == 50 and not fallback.tokens_exact  # counted past the text limit


def test_sse_parser_splits_complete_events_and_keeps_the_rest():
    from rosi_vllm.serving.response_capture import DONE, event_data, split_events

    events, rest = split_events(b'data: {"a": 1}\n\n: keep-alive\n\ndata: [DONE]\n\ndata: {"b"')
    assert events == [b'data: {"a": 1}\n\n', b": keep-alive\n\n", b"data: [DONE]\n\n"] and rest == b'data: {"b"'
    assert [event_data(e) for e in events] == [b'{"a": 1}', b"", DONE]
    assert split_events(b"data: x") == ([], b"data: x")
    # Multi-line data, with or without the space after the colon.
    assert event_data(b"event: message\ndata:{\"a\":\ndata: 1}\n\n") == b'{"a":1}'
