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


# ---- property: how the stream is cut into chunks changes nothing (the one-whole-event fast path included) --------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rosi_vllm.serving.response_capture import ModelRename  # noqa: E402


def _stream(texts, usage: bool, error: bool) -> list[bytes]:
    events = [b"data: " + json.dumps({"model": "rosi-alpha-8", "choices": [{"index": 0, "text": t}]},
                                     separators=(",", ":")).encode() + b"\n\n" for t in texts]
    if error:
        events.append(b'data: {"error":{"message":"engine dead","type":"InternalServerError","code":500}}\n\n')
    if usage:
        events.append(b'data: {"model":"rosi-alpha-8","choices":[],"usage":{"prompt_tokens":3,'
                      b'"completion_tokens":' + str(len(texts)).encode() + b"}}\n\n")
    return events + [b"data: [DONE]\n\n"]


@settings(max_examples=400, deadline=None)
@given(texts=st.lists(st.text(max_size=12), max_size=8), usage=st.booleans(), error=st.booleans(),
       strip=st.booleans(), renamed=st.booleans(), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_any_chunking_of_a_stream_gives_the_same_result(texts, usage, error, strip, renamed, cuts):
    # as the middleware uses it: whole events when it renames the model; raw chunks kept as they came otherwise
    events = _stream(texts, usage, error)
    whole = b"".join(events)

    def run(chunks):
        rename = ModelRename("rosi-alpha-8", "x" if renamed else "rosi-alpha-8")
        capture = ResponseCapture(streaming=True, strip_usage_event=strip, whole_events=rename.active)
        out = b"".join(rename.events(capture.feed(c)) for c in chunks) + rename.events(capture.finish())
        return out, capture.texts, capture.completion_tokens, capture.prompt_tokens, capture.error_status, \
            capture.done_seen, capture.first_content_seen

    per_event = run(events)  # vLLM's way: one whole event per message (the fast path)
    points = sorted({min(c, len(whole)) for c in cuts})
    arbitrary = run([whole[a:b] for a, b in zip([0, *points], [*points, len(whole)], strict=True)])
    assert per_event == arbitrary
    out = per_event[0]
    # renamed: no event names the served variant any more (a completion's own text may still say anything: the
    # property found one reading "rosi-alpha"; inside a JSON string its quotes would be escaped)
    assert out.endswith(b"data: [DONE]\n\n") and not (renamed and b'"model":"rosi-alpha-8"' in out)
    assert (b'"usage"' in out) == (usage and not strip)
    if not (strip and usage) and not renamed:
        assert out == whole  # nothing to remove or rewrite: the client gets the bytes as they came
    assert per_event[4] == (500 if error else None) and per_event[5]
    assert per_event[1] == ({0: "".join(texts)} if "".join(texts) else {})
    assert per_event[6] == any(texts)


# ---- vLLM's own event shapes are read by pattern, not decoded: the text must equal what JSON decoding gives ------

def _vllm_event(obj) -> bytes:  # vLLM writes compact JSON (pydantic model_dump_json)
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.tuples(st.integers(0, 2), st.text(max_size=10)), max_size=12), chat=st.booleans())
def test_pattern_read_text_equals_json_decoding(pieces, chat):
    events = []
    if chat:
        events.append(_vllm_event({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}))
    for index, text in pieces:
        choice = ({"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None} if chat
                  else {"index": index, "text": text, "logprobs": None, "finish_reason": None, "stop_reason": None})
        events.append(_vllm_event({"id": "c", "object": "x", "created": 1, "model": "m", "choices": [choice]}))
    if chat:  # the last chat event has an empty delta
        events.append(_vllm_event({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    events.append(b"data: [DONE]\n\n")
    capture = ResponseCapture(streaming=True, text_limit=40)
    for event in events:
        assert capture.feed(event) == event
    capture.finish()
    expected: dict[int, str] = {}
    for index, text in pieces:
        if text:
            expected[index] = (expected.get(index, "") + text)[:40]
    assert capture.texts == expected
    assert capture.completion_tokens == sum(1 for _, t in pieces if t) and capture.done_seen
    assert capture.first_content_seen == bool(expected)


def test_a_bad_event_does_not_hide_the_others_text():
    capture = ResponseCapture(streaming=True)
    for event in (_sse({"choices": [{"index": 0, "text": "I cannot"}]}), b"data: {not json\n\n",
                  _sse({"choices": [{"index": 0, "text": " do that"}]}), b"data:[DONE]\n\n"):
        capture.feed(event)
    capture.finish()
    assert capture.texts == {0: "I cannot do that"} and capture.done_seen


def test_events_that_carry_usage_and_text_give_both():
    # vLLM's continuous_usage_stats: every content event carries the running usage too
    capture = ResponseCapture(streaming=True, strip_usage_event=False)
    for i, piece in enumerate(["I can", "not", " help"], start=1):
        capture.feed(_vllm_event({"choices": [{"index": 0, "text": piece}],
                                  "usage": {"prompt_tokens": 4, "completion_tokens": i}}))
    capture.feed(b"data: [DONE]\n\n")
    capture.finish()
    assert capture.texts == {0: "I cannot help"} and capture.completion_tokens == 3 and capture.prompt_tokens == 4
    assert capture.tokens_exact and capture.done_seen and capture.error_status is None


# ---- property: reading a batch of raw chunks at once gives what reading its events one by one gives ------------

_USAGE_EVENT = st.tuples(st.integers(0, 50), st.integers(0, 50)).map(lambda c: _vllm_event(
    {"id": "c", "object": "text_completion", "model": "m", "choices": [],
     "usage": {"prompt_tokens": c[0], "total_tokens": c[0] + c[1], "completion_tokens": c[1]}}))
_ODD_EVENTS = st.sampled_from([
    b'data: {"error":{"message":"engine dead","type":"InternalServerError","code":500}}\n\n',
    b'data: {"choices": [{"index": 0, "text": "spaced"}]}\n\n',  # not vLLM's compact shape
    b'data: {"choices":[{"text":"no index"}]}\n\n',
    b'data: {"choices":[{"index":0,"text":"both"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n',
    b"data:[DONE]\n\n", b": keep-alive\n\n", b"data: {not json\n\n"])


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.tuples(st.integers(0, 2), st.text(max_size=10), st.booleans()), max_size=10),
       usage=st.one_of(st.none(), _USAGE_EVENT), odd=st.lists(_ODD_EVENTS, max_size=2), where=st.integers(0, 12),
       limit=st.sampled_from([0, 8, 512]))
def test_batch_reading_equals_event_by_event_reading(pieces, usage, odd, where, limit):
    events = [_vllm_event({"id": "c", "model": "m", "choices": [
        {"index": i, "delta": {"content": t}, "finish_reason": None} if chat else
        {"index": i, "text": t, "logprobs": None, "finish_reason": None}]}) for i, t, chat in pieces]
    events[min(where, len(events)):min(where, len(events))] = odd
    events += ([usage] if usage else []) + [b"data: [DONE]\n\n"]

    def read(whole_events: bool):
        capture = ResponseCapture(streaming=True, text_limit=limit, whole_events=whole_events)
        for event in events:
            assert capture.feed(event) == event
        capture.finish()
        return (capture.texts, capture.completion_tokens, capture.prompt_tokens, capture.tokens_exact,
                capture.error_status, capture.done_seen, capture.first_content_seen)

    assert read(whole_events=False) == read(whole_events=True)
