"""Read the generated text and token count out of an OpenAI-style response as it streams by.

Pure bytes-in/bytes-out, no vLLM or ASGI. Two shapes:

* non-streaming: one JSON body (possibly split across chunks), forwarded
  unchanged and parsed at the end;
* streaming: server-sent events ``data: {...}\\n\\n`` ending in
  ``data: [DONE]``. Events are forwarded as soon as they are complete.

For streaming token counts the middleware asks vLLM for a usage event
(``stream_options.include_usage``); if the client did not ask for it itself,
that event is removed again here, so the client sees exactly the stream it
requested. Without a usage event tokens are counted as content events (one per
token with vLLM's defaults) and `tokens_exact` is False.

Text is kept up to `text_limit` characters per choice: the refusal judge reads
only the opening (160 characters). Content events are decoded in batches, and
once every choice has that much text not at all (a byte search finds the usage
and error events): on a CPU-bound API server every microsecond per token is
queueing delay for every stream in flight, so a stream costs it as little as
possible.

`split_events` and `event_data` are the project's one server-sent-events
parser (the benchmarks' load generator reads streams with them too): events end
at a blank line (``\n\n``), an event's payload is its ``data:`` lines joined.
"""

from __future__ import annotations

import json
import re

#: The payload of the event that ends an OpenAI-style stream.
DONE = b"[DONE]"


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete events at the front of `buffer` (each with its ``\n\n``), and the incomplete rest.

    Incremental by design: a caller keeps the rest and prepends it to the next
    chunk, so every event is forwarded as soon as it is complete.
    """
    events, start = [], 0
    while True:
        end = buffer.find(b"\n\n", start)
        if end < 0:
            return events, buffer[start:] if start else buffer
        events.append(buffer[start: end + 2])
        start = end + 2


def event_data(event: bytes) -> bytes:
    """The payload of one event: its ``data:`` lines, stripped and joined (b"" for comments and keep-alives)."""
    if event.startswith(b"data: ") and event.find(b"\n") == len(event) - 2:  # one data line: vLLM's every event
        return event[6:-2].strip()
    return b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))


#: characters of each choice's text kept for the refusal judge (it reads the first 160 after stripping)
TEXT_LIMIT = 512
#: content events decoded together: one ``json.loads`` per batch instead of one per token
DECODE_BATCH = 32
#: vLLM's closing event, byte for byte
DONE_EVENT = b"data: [DONE]\n\n"
#: keys whose events are decoded when they arrive, not batched (inside a JSON string every ``"`` is escaped, so
#: generated text never matches): the usage event (token counts, maybe stripped) and vLLM's error event
_USAGE_KEY, _ERROR_KEY = b'"usage"', b'"error"'
#: an event carrying non-empty generated text: the first one is time to first token
_CONTENT = re.compile(rb'"(?:text|content)"\s*:\s*"(?!")')
#: a choice's text as vLLM writes it (compact JSON): completions ``"index":0,"text":"…"``, chat
#: ``"index":0,"delta":{"content":"…"`` (the first chat event also names the role). Keys cannot occur inside
#: strings (their quotes would be escaped), so a match is a choice's text; an event with text in any other shape
#: is JSON-decoded instead.
_CHOICE_TEXT = re.compile(rb'"index":(\d+),(?:"text"|"delta":\{(?:"role":"\w+",)?"content"):"((?:[^"\\]|\\.)*)"')


class ResponseCapture:
    """The text and token counts of one response, read as it passes through.

    Streaming content events are not decoded one by one: they are kept as they
    came and decoded in batches (one ``json.loads`` of a JSON array), and not at
    all once every choice has `text_limit` characters. Only usage and error
    events are decoded when they arrive. `texts`, `completion_tokens` and
    `done_seen` decode what is still pending when they are read.
    """

    __slots__ = ("streaming", "strip_usage_event", "text_limit", "_texts", "_completion_tokens", "prompt_tokens",
                 "tokens_exact", "first_content_seen", "error_status", "_done_seen", "_buffer", "_pending",
                 "_content_events", "_saturated")

    def __init__(self, streaming: bool, strip_usage_event: bool = False, text_limit: int = TEXT_LIMIT):
        self.streaming, self.strip_usage_event, self.text_limit = streaming, strip_usage_event, text_limit
        self._texts: dict[int, str] = {}
        self._completion_tokens = 0
        self.prompt_tokens = 0
        self.tokens_exact = False
        self.first_content_seen = False
        #: the stream's HTTP-like status when it carried an error event (vLLM's shape: {"error": {"code": 500, ...}})
        self.error_status: int | None = None
        self._done_seen = False
        self._buffer = b""
        self._pending: list[bytes] = []
        self._content_events = 0
        self._saturated = text_limit <= 0  # text_limit 0: keep no text at all (the judge skips this response)

    @property
    def texts(self) -> dict[int, str]:
        """Generated text per choice index, up to `text_limit` characters each."""
        if self._pending:
            self._decode_pending()
        return self._texts

    @property
    def completion_tokens(self) -> int:
        """vLLM's usage count when the response had one (`tokens_exact`), else the content events seen."""
        if self.tokens_exact:
            return self._completion_tokens
        if self._pending:
            self._decode_pending()
        return self._content_events

    @property
    def done_seen(self) -> bool:
        """Streaming: the closing ``data: [DONE]`` arrived (a stream without it was cut short)."""
        if self._pending and not self._done_seen:
            self._decode_pending()
        return self._done_seen

    def feed(self, chunk: bytes) -> bytes:
        """Consume a body chunk; return the bytes to forward to the client now (`chunk` itself if unchanged)."""
        if not self.streaming:
            self._buffer += chunk
            return chunk
        if not self._buffer and chunk.endswith(b"\n\n") and chunk.find(b"\n\n") == len(chunk) - 2:
            # vLLM's usual message: exactly one whole event. No splitting, no copy.
            return chunk if self._handle_event(chunk) else b""
        events, self._buffer = split_events(self._buffer + chunk)
        return b"".join([event for event in events if self._handle_event(event)])

    def finish(self) -> bytes:
        """End of body: parse what a non-streaming response held; flush an unterminated event."""
        if not self.streaming:
            self._parse_json_body(self._buffer)
            self._buffer = b""
            return b""
        rest, self._buffer = self._buffer, b""
        if rest.strip() and self._handle_event(rest):
            return rest
        return b""

    def _handle_event(self, event: bytes) -> bool:
        """Record one whole SSE event; False if it must not reach the client. The per-token path: keep it lean."""
        if _USAGE_KEY in event or _ERROR_KEY in event:
            return self._handle_decoded(event_data(event))
        if event == DONE_EVENT:
            self._done_seen = True
            return True
        if not self.first_content_seen and _CONTENT.search(event):
            self.first_content_seen = True
        if self._saturated:
            if event.startswith(b"data:"):
                self._content_events += 1  # enough text for the judge: count, do not decode
            return True
        self._pending.append(event)
        if len(self._pending) >= DECODE_BATCH:
            self._decode_pending()
        return True

    def _handle_decoded(self, payload: bytes) -> bool:
        if self._pending:  # keep the text in stream order
            self._decode_pending()
        try:
            data = json.loads(payload)
        except ValueError:
            return True
        if not isinstance(data, dict):
            return True
        error = data.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            self.error_status = code if isinstance(code, int) and 400 <= code <= 599 else 500
            return True
        if self._take_usage(data) and self.strip_usage_event and not data.get("choices"):
            return False
        self._take_choices(data)
        return True

    def _decode_pending(self) -> None:
        """Read the kept events' text: vLLM's own shape by pattern, anything else (and odd ``[DONE]``s) as JSON."""
        events, self._pending = self._pending, []
        payloads = []
        for event in events:
            found = vllm_choice_texts(event)
            if found:
                for index, text in found:
                    self._add_text(index, text)
                continue
            payload = event_data(event)
            if payload == DONE:
                self._done_seen = True
            elif payload:
                payloads.append(payload)
        if payloads:
            self._decode_json(payloads)
        self._note_saturation()

    def _decode_json(self, payloads: list[bytes]) -> None:
        try:
            items = json.loads(b"[" + b",".join(payloads) + b"]")
        except ValueError:  # one bad event must not hide the others' text
            items = []
            for payload in payloads:
                try:
                    items.append(json.loads(payload))
                except ValueError:
                    continue
        for data in items:
            if isinstance(data, dict):
                self._take_choices(data)

    def _take_choices(self, data: dict) -> None:
        for choice in data.get("choices") or []:
            piece = _choice_text(choice)
            if piece:
                self._add_text(choice.get("index", 0), piece)
        self._note_saturation()

    def _note_saturation(self) -> None:
        """Every choice has all the text the judge reads: later content events are counted, not read."""
        self._saturated = bool(self._texts) and min(map(len, self._texts.values())) >= self.text_limit

    def _add_text(self, index, piece: str) -> None:
        if piece:
            self._texts[index] = (self._texts.get(index, "") + piece)[: self.text_limit]
            self.first_content_seen = True
            self._content_events += 1

    def _parse_json_body(self, body: bytes) -> None:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        for choice in data.get("choices") or []:
            piece = _choice_text(choice)
            if piece is not None:
                self._texts[choice.get("index", 0)] = piece
        self._take_usage(data)

    def _take_usage(self, data: dict) -> bool:
        """vLLM's token counts from a response or event that carries them; whether it did."""
        usage = data.get("usage")
        if not (isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int)):
            return False
        self._completion_tokens, self.tokens_exact = usage["completion_tokens"], True
        self.prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
        return True


def vllm_choice_texts(event: bytes) -> list[tuple[int, str]]:
    """(index, text) of each choice of one event in vLLM's own shape, read by pattern; [] for any other shape."""
    return [(int(index), raw.decode("utf-8", "replace") if b"\\" not in raw else json.loads(b'"' + raw + b'"'))
            for index, raw in _CHOICE_TEXT.findall(event)]


def _choice_text(choice) -> str | None:
    if not isinstance(choice, dict):
        return None
    if isinstance(choice.get("text"), str):  # completions
        return choice["text"]
    for key in ("delta", "message"):  # chat: streaming delta / full message
        part = choice.get(key)
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            return part["content"]
    return None


class ModelRename:
    """Replace the engine's model name in a response by the one the client asked for.

    The engine answers with the name it served the request under: a
    ``rosi-alpha-*`` adapter or the checkpoint path. Both are internals (they
    tell a tenant how the operator builds variants, and where the weights lie),
    and the OpenAI API answers with the model the client named, so the top-level
    ``"model"`` field of the JSON body and of every SSE event is rewritten.

    A byte replacement of ``"model":"<engine name>"``, not a JSON round trip: vLLM
    writes compact JSON (pydantic / Starlette), and inside a JSON string every
    ``"`` is escaped, so generated text can never contain the pattern. It runs
    on complete events only (`ResponseCapture.feed` returns whole events), so a
    pattern never straddles two chunks.
    """

    def __init__(self, engine_model: str, client_model: str):
        self.active = engine_model != client_model
        if self.active:  # nothing to build for the common case (the served name, the baked variant)
            self._old = b'"model":' + json.dumps(engine_model, ensure_ascii=False).encode()
            self._new = b'"model":' + json.dumps(client_model, ensure_ascii=False).encode()

    def body(self, data: bytes) -> bytes:
        return data.replace(self._old, self._new, 1) if self.active else data

    def events(self, data: bytes) -> bytes:
        return data.replace(self._old, self._new) if self.active else data
