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
only the opening (160 characters), and once every choice has that much, later
events are no longer JSON-decoded (a byte search finds the usage event), so a
long stream costs the API server almost nothing per token.

`split_events` and `event_data` are the project's one server-sent-events
parser (the benchmarks' load generator reads streams with them too): events end
at a blank line (``\n\n``), an event's payload is its ``data:`` lines joined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

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


@dataclass
class ResponseCapture:
    streaming: bool
    strip_usage_event: bool = False
    text_limit: int = 512
    texts: dict[int, str] = field(default_factory=dict)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    tokens_exact: bool = False
    first_content_seen: bool = False
    #: the stream's HTTP-like status when it carried an error event (vLLM's shape: {"error": {"code": 500, ...}})
    error_status: int | None = None
    #: streaming: the closing ``data: [DONE]`` arrived (a stream without it was cut short)
    done_seen: bool = False
    _buffer: bytes = b""
    _content_events: int = 0
    _saturated: bool = False

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
        if not self.tokens_exact:
            self.completion_tokens = self._content_events
        return b""

    def _handle_event(self, event: bytes) -> bool:
        """Record one SSE event; False if it must not reach the client."""
        payload = event_data(event)
        if payload == DONE:
            self.done_seen = True
        if not payload or payload == DONE:
            if not self.tokens_exact:
                self.completion_tokens = self._content_events
            return True
        if self._saturated and b'"usage"' not in payload:
            self._content_events += 1  # enough text for the judge: count, do not decode
            return True
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
        usage = data.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.completion_tokens, self.tokens_exact = usage["completion_tokens"], True
            self.prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
            if self.strip_usage_event and not data.get("choices"):
                return False
        for choice in data.get("choices") or []:
            piece = _choice_text(choice)
            if piece:
                index = choice.get("index", 0)
                self.texts[index] = (self.texts.get(index, "") + piece)[: self.text_limit]
                self.first_content_seen = True
                self._content_events += 1
        self._saturated = bool(self.texts) and min(map(len, self.texts.values())) >= self.text_limit
        return True

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
                self.texts[choice.get("index", 0)] = piece
        usage = data.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.completion_tokens, self.tokens_exact = usage["completion_tokens"], True
            self.prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0


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
