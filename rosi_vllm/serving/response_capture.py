"""Read the generated text and token count out of an OpenAI-style response as it streams by.

Pure bytes-in/bytes-out, no vLLM or ASGI. Two shapes:

* non-streaming: one JSON body (possibly split across chunks), forwarded
  unchanged and parsed at the end;
* streaming: server-sent events ``data: {...}\\n\\n`` ending in
  ``data: [DONE]``. Chunks are forwarded as they came; only when the caller
  rewrites events (`whole_events`) or the usage event may have to go are they
  cut into whole events first, each forwarded as soon as it is complete.

For streaming token counts the middleware asks vLLM for a usage event
(``stream_options.include_usage``); if the client did not ask for it itself,
that event is removed again here, so the client sees exactly the stream it
requested. Without a usage event tokens are counted as content events (one per
token with vLLM's defaults) and `tokens_exact` is False.

Text is kept up to `text_limit` characters per choice: the refusal judge reads
only the opening (160 characters). Chunks are kept as they came (one list
append per token) and read in batches: a batch of vLLM's own events with a few
byte searches over all of it (choice texts and usage counts by pattern), any
other batch event by event (vLLM's shapes by pattern, the rest as JSON); once
every choice has that much text, content is counted, not read. Only a usage
event the client must not see is read on arrival. On a CPU-bound API server
every microsecond per token is queueing delay for every stream in flight, so a
stream costs it as little as possible.

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
#: chunks kept before they are read together (a long stream holds at most this many)
DECODE_BATCH = 32
#: vLLM's closing event, byte for byte
DONE_EVENT = b"data: [DONE]\n\n"
#: the keys that find the usage event (token counts, maybe stripped) and vLLM's error event (inside a JSON
#: string every ``"`` is escaped, so generated text never contains them)
_USAGE_KEY, _ERROR_KEY = b'"usage"', b'"error"'
#: a non-empty generated text value: the first one is time to first token; past the judge's text limit, content
#: is counted by these matches (the same count as reading it: one per non-empty piece), not read
_CONTENT = re.compile(rb'"(?:text|content)"\s*:\s*"(?!")')
#: a choice's text as vLLM writes it (compact JSON): completions ``"index":0,"text":"…"``, chat
#: ``"index":0,"delta":{"content":"…"`` (the first chat event also names the role). Keys cannot occur inside
#: strings (their quotes would be escaped), so a match is a choice's text; an event with text in any other shape
#: is JSON-decoded instead. The string is an unrolled loop, ``[^"\\]*(?:\\.[^"\\]*)*``: the regex engine runs a
#: character-class repeat in C where ``(?:[^"\\]|\\.)*`` would branch per character.
_CHOICE_TEXT = re.compile(rb'"index":(\d+),(?:"text"|"delta":\{(?:"role":"\w+",)?"content"):"([^"\\]*(?:\\.[^"\\]*)*)"')
#: vLLM's usage object, compact: the two counts the layer needs, read without decoding the event
_VLLM_USAGE = re.compile(rb'"usage":\{"prompt_tokens":(\d+),"total_tokens":\d+,"completion_tokens":(\d+)[,}]')


class ResponseCapture:
    """The text and token counts of one response, read as it passes through.

    Streaming events are not decoded one by one: they are kept as they came and
    read in batches, content not at all once every choice has `text_limit`
    characters. Every reading (`texts`, the token counts, `error_status`,
    `done_seen`) first reads what is still kept.
    """

    __slots__ = ("streaming", "strip_usage_event", "text_limit", "_texts", "_completion_tokens", "_prompt_tokens",
                 "_tokens_exact", "first_content_seen", "_error_status", "_done_seen", "_buffer", "_pending",
                 "_content_events", "_saturated", "_whole_events", "_tail")

    def __init__(self, streaming: bool, strip_usage_event: bool = False, text_limit: int = TEXT_LIMIT,
                 whole_events: bool = False):
        self.streaming, self.strip_usage_event, self.text_limit = streaming, strip_usage_event, text_limit
        #: `feed` returns whole events (the caller rewrites them, or the usage event may have to go); otherwise
        #: every chunk is forwarded as it came and only kept, to be split into events when it is read
        self._whole_events = whole_events or strip_usage_event
        self._tail = b""  # raw chunks: the end of the last one, until the first content (a key cut in two)
        self._texts: dict[int, str] = {}
        self._completion_tokens = 0
        self._prompt_tokens = 0
        self._tokens_exact = False
        self.first_content_seen = False
        self._error_status: int | None = None
        self._done_seen = False
        self._buffer = b""
        self._pending: list[bytes] = []
        self._content_events = 0
        self._saturated = text_limit <= 0  # text_limit 0: keep no text at all (the judge skips this response)

    # What was read so far: each reading first reads what is still kept (`_read`).
    @property
    def texts(self) -> dict[int, str]:
        """Generated text per choice index, up to `text_limit` characters each."""
        return self._read()._texts

    @property
    def completion_tokens(self) -> int:
        """vLLM's usage count when the response had one (`tokens_exact`), else the content events seen."""
        read = self._read()
        return read._completion_tokens if read._tokens_exact else read._content_events

    @property
    def prompt_tokens(self) -> int:
        """vLLM's usage count of prompt tokens (0 without a usage event)."""
        return self._read()._prompt_tokens

    @property
    def tokens_exact(self) -> bool:
        """Whether the counts are vLLM's own (a usage event or body), not counted content events."""
        return self._read()._tokens_exact

    @property
    def error_status(self) -> int | None:
        """The stream's HTTP-like status when it carried an error event (vLLM's: ``{"error": {"code": 500, ...}}``)."""
        return self._read()._error_status

    @property
    def done_seen(self) -> bool:
        """Streaming: the closing ``data: [DONE]`` arrived (a stream without it was cut short)."""
        return self._read()._done_seen

    def _read(self) -> ResponseCapture:
        if self._pending:
            self._decode_pending()
        return self

    def feed(self, chunk: bytes) -> bytes:
        """Consume a body chunk; return the bytes to forward to the client now (`chunk` itself if unchanged)."""
        if not self.streaming:
            self._buffer += chunk
            return chunk
        if not self._whole_events:  # forwarded as it came: the per-token path is a list append
            pending = self._pending
            pending.append(chunk)
            if not self.first_content_seen:
                self._note_first_content(chunk)
            if len(pending) >= DECODE_BATCH:
                self._decode_pending()
            return chunk
        if self._buffer or not chunk.endswith(b"\n\n") or chunk.find(b"\n\n") != len(chunk) - 2:
            events, self._buffer = split_events(self._buffer + chunk)
            return b"".join([event for event in events if self._handle_event(event)])
        # vLLM's usual message: exactly one whole event. No splitting, no copy.
        return chunk if self._handle_event(chunk) else b""

    def finish(self) -> bytes:
        """End of body: parse what a non-streaming response held; flush an unterminated event."""
        if not self.streaming:
            self._parse_json_body(self._buffer)
            self._buffer = b""
            return b""
        if not self._whole_events:  # everything was forwarded; read it, an unterminated last event included
            self._decode_pending()
            rest, self._buffer = self._buffer, b""
            if rest.strip():
                self._read_events([rest])
            return b""
        rest, self._buffer = self._buffer, b""
        if rest.strip() and self._handle_event(rest):
            return rest
        return b""

    def _note_first_content(self, chunk: bytes) -> None:
        """Time to first token from raw chunks: the content key may be cut between two of them."""
        if _CONTENT.search(self._tail + chunk):
            self.first_content_seen, self._tail = True, b""
        else:
            self._tail = chunk[-64:]

    def _handle_event(self, event: bytes) -> bool:
        """Whole events: keep one to be read with its batch; False if it must not reach the client.

        A list append, and a pattern search until the first content (time to
        first token). Only an event that may have to be removed now, the usage
        event the client did not ask for, is decoded at once.
        """
        if self.strip_usage_event and _USAGE_KEY in event:
            if self._pending:  # keep the text in stream order
                self._decode_pending()
            data = _decoded(event_data(event))
            if data is None:
                return True
            usage_only = self._take_decoded(data) and not data.get("choices")
            self._note_saturation()
            return not usage_only
        if not self.first_content_seen and _CONTENT.search(event):
            self.first_content_seen = True
        pending = self._pending
        pending.append(event)
        if len(pending) >= DECODE_BATCH:
            self._decode_pending()
        return True

    def _decode_pending(self) -> None:
        """Read what was kept, in stream order: raw chunks as one batch where `_read_batch` can, else by event."""
        kept, self._pending = self._pending, []
        if self._whole_events:
            self._read_events(kept)
            return
        data = self._buffer + b"".join(kept)  # raw chunks: the events end at the last blank line, the rest waits
        end = data.rfind(b"\n\n") + 2
        if end < 2:
            self._buffer = data
            return
        body, self._buffer = data[:end], data[end:]
        if not self._read_batch(body):
            self._read_events(split_events(body)[0])

    def _read_batch(self, body: bytes) -> bool:
        """Read whole events at once with a few byte searches over all of them, when that reads them exactly.

        Exactly: the events are vLLM's content events, at most one usage event
        without choices, and ``data: [DONE]``; every text-bearing key in the batch
        (``"text"``/``"content"``, which cannot occur inside a JSON string) is
        one the choice pattern read. Anything else (an error event, usage on
        every event, another shape, an odd ``[DONE]``) returns False, having
        read nothing, and the batch is read event by event.
        """
        if _ERROR_KEY in body:
            return False
        done = body.count(DONE)
        if done and body.count(DONE_EVENT) != done:
            return False
        usage = None
        at = body.find(_USAGE_KEY)
        if at >= 0:
            start, stop = body.rfind(b"\n\n", 0, at) + 2, body.find(b"\n\n", at) + 2
            start = 0 if start < 2 else start
            event = body[start:stop]
            if b'"choices":[]' not in event or body.find(_USAGE_KEY, stop) >= 0:
                return False
            usage = vllm_usage(event) or _usage_counts(_decoded(event_data(event)))
            if usage is None:
                return False
            body = body[:start] + body[stop:]
        if self._saturated:  # enough text for the judge: count the content events, do not read them
            self._content_events += len(_CONTENT.findall(body))
        else:
            found = _CHOICE_TEXT.findall(body)
            if len(found) != body.count(b'"text"') + body.count(b'"content"'):
                return False
            if found:
                self._add_raw(_by_choice(found))
        if usage is not None:
            self._prompt_tokens, self._completion_tokens = usage
            self._tokens_exact = True
        self._done_seen = self._done_seen or done > 0
        self._note_saturation()
        return True

    def _read_events(self, events: list[bytes]) -> None:
        """Whole events one by one: vLLM's content events by pattern (raw text pieces joined and decoded once
        per choice); usage and error events, events in any other shape and odd ``[DONE]``s as JSON, one
        ``json.loads`` for the batch. Once every choice has the text the judge reads, content is counted."""
        raw: dict[int, list[bytes]] = {}
        payloads: list[bytes] = []
        for event in events:
            if event == DONE_EVENT:
                self._done_seen = True
                continue
            found = None
            if _USAGE_KEY not in event and _ERROR_KEY not in event:
                if self._saturated:  # enough text for the judge: count, do not read
                    self._content_events += len(_CONTENT.findall(event))
                    continue
                found = _CHOICE_TEXT.findall(event)
            if found:
                if payloads:
                    self._decode_json(payloads)
                    payloads = []
                for index, pieces in _by_choice(found).items():
                    raw.setdefault(index, []).extend(pieces)
                continue
            payload = event_data(event)
            if payload == DONE:
                self._done_seen = True
            elif payload:
                if raw:
                    self._add_raw(raw)
                    raw = {}
                payloads.append(payload)
        if raw:
            self._add_raw(raw)
        if payloads:
            self._decode_json(payloads)
        self._note_saturation()

    def _add_raw(self, raw: dict[int, list[bytes]]) -> None:
        """Pattern-read text pieces (JSON string contents, escapes kept), joined and decoded once per choice."""
        for index, pieces in raw.items():
            self._content_events += len(pieces)
            if self._saturated:
                continue
            text = _raw_text(b"".join(pieces))
            self._texts[index] = (self._texts.get(index, "") + text)[: self.text_limit]
            self.first_content_seen = True

    def _decode_json(self, payloads: list[bytes]) -> None:
        try:
            items = json.loads(b"[" + b",".join(payloads) + b"]")
        except ValueError:  # one bad event must not hide the others' text
            items = [data for data in map(_decoded, payloads) if data is not None]
        for data in items:
            if isinstance(data, dict):
                self._take_decoded(data)

    def _take_decoded(self, data: dict) -> bool:
        """One decoded event: vLLM's error event sets the status; usage is taken; choices' text is read.

        Whether it carried the usage counts.
        """
        error = data.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            self._error_status = code if isinstance(code, int) and 400 <= code <= 599 else 500
            return False
        usage = self._take_usage(data)
        for choice in data.get("choices") or []:
            piece = _choice_text(choice)
            if piece:
                self._add_text(choice.get("index", 0), piece)
        return usage

    def _note_saturation(self) -> None:
        """Every choice has all the text the judge reads: later content events are counted, not read.

        Decided once per batch read (not event by event), so reading a batch at once and reading it event by
        event keep the same text.
        """
        self._saturated = bool(self._texts) and min(map(len, self._texts.values())) >= self.text_limit

    def _add_text(self, index, piece: str) -> None:
        self._content_events += 1
        if not self._saturated:
            self._texts[index] = (self._texts.get(index, "") + piece)[: self.text_limit]
            self.first_content_seen = True

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
        usage = _usage_counts(data)
        if usage is None:
            return False
        (self._prompt_tokens, self._completion_tokens), self._tokens_exact = usage, True
        return True


def vllm_choice_texts(event: bytes) -> list[tuple[int, str]]:
    """(index, text) of each choice of one event in vLLM's own shape, read by pattern; [] for any other shape."""
    return [(int(index), _raw_text(raw)) for index, raw in _CHOICE_TEXT.findall(event)]


def _raw_text(raw: bytes) -> str:
    """A JSON string's contents as the pattern found them (escapes kept), decoded."""
    return raw.decode("utf-8", "replace") if b"\\" not in raw else json.loads(b'"' + raw + b'"')


def vllm_usage(event: bytes) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) of a usage object in vLLM's own shape, read by pattern; None otherwise."""
    counts = _VLLM_USAGE.search(event)
    return (int(counts[1]), int(counts[2])) if counts else None


def _by_choice(found: list[tuple[bytes, bytes]]) -> dict[int, list[bytes]]:
    """The pattern's (index, raw text) matches grouped by choice, empty pieces left out."""
    if len({index for index, _ in found}) == 1:  # one choice, as almost every request has
        pieces = [piece for _, piece in found if piece]
        return {int(found[0][0]): pieces} if pieces else {}
    grouped: dict[int, list[bytes]] = {}
    for index, piece in found:
        if piece:
            grouped.setdefault(int(index), []).append(piece)
    return grouped


def _usage_counts(data: dict | None) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) of a decoded response or event with a usage object (prompt 0 if absent)."""
    usage = data.get("usage") if data is not None else None
    if not (isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int)):
        return None
    return (usage["prompt_tokens"] if isinstance(usage.get("prompt_tokens"), int) else 0), usage["completion_tokens"]


def _decoded(payload: bytes) -> dict | None:
    """One event's JSON object, or None when it is not one."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


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
    on complete events only (the middleware makes its capture return whole
    events, ``whole_events``, whenever it renames), so a pattern never
    straddles two chunks.
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
