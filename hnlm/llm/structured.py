"""Structured JSON output: schema helpers, the field token-budget logits processor, parse + validate.

Why a budget processor: grammar-constrained decoding fixes the JSON *shape*, but when
`max_new_tokens` runs out the answer is an unterminated prefix. So each string field gets a token budget;
once it is spent the processor forces the closing quote, and when the whole answer is about to run out it
forces the object's end. Lengths (words) are checked after parsing, never trusted to the grammar.

Schema extensions read here (stripped before the grammar sees the schema):
  "x-max-tokens": token budget of a string field;  "x-max-words": word cap checked after parsing.
"""

from __future__ import annotations

import copy
import json
import re

import torch

DEFAULT_FIELD_TOKENS = 64
FIELD_OVERHEAD_TOKENS = 8  # key, quotes, separators per field (tokenisers split `", "` differently)


def strip_extensions(schema: dict) -> dict:
    """The schema without our x- keys (for grammar compilers, servers and jsonschema)."""
    def clean(node):
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not k.startswith("x-")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node
    return clean(copy.deepcopy(schema))


def field_budgets(schema: dict, max_new_tokens: int | None) -> tuple[dict[str, int], int]:
    """Token budget per top-level string field, and the total max_new_tokens.

    Without max_new_tokens the total is the sum of budgets plus overhead; with a smaller total the budgets
    shrink proportionally so that the answer can always close."""
    props = schema.get("properties", {})
    budgets = {k: int(v.get("x-max-tokens", DEFAULT_FIELD_TOKENS)) for k, v in props.items()
               if v.get("type") == "string"}
    overhead = FIELD_OVERHEAD_TOKENS * max(len(props), 1) + 4
    need = sum(budgets.values()) + overhead
    if max_new_tokens is None:
        return budgets, need
    if max_new_tokens < need and budgets:
        room = max(max_new_tokens - overhead, len(budgets))
        scale = room / sum(budgets.values())
        budgets = {k: max(1, int(v * scale)) for k, v in budgets.items()}
    return budgets, max_new_tokens


class _JsonTracker:
    """Character-level state of a JSON object being generated: are we inside a value string, which key."""

    def __init__(self):
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.string_is_key = False
        self.expect_key = False
        self.buf = []
        self.last_key = None
        self.value_key = None  # key whose string value we are inside

    def feed(self, text: str):
        for ch in text:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
                    if self.string_is_key:
                        self.last_key = "".join(self.buf)
                    self.value_key = None
                elif self.string_is_key:
                    self.buf.append(ch)
                continue
            if ch == '"':
                self.in_string = True
                self.string_is_key = self.depth == 1 and self.expect_key
                self.buf = []
                if not self.string_is_key and self.depth == 1:
                    self.value_key = self.last_key
            elif ch in "{[":
                self.depth += 1
                self.expect_key = ch == "{"
            elif ch in "}]":
                self.depth -= 1
            elif ch == ",":
                self.expect_key = self.depth == 1
            elif ch == ":":
                self.expect_key = False


class FieldBudgetProcessor:
    """Logits processor (runs after the grammar mask): closes string fields whose token budget is spent and
    closes the object when the total budget is about to run out. One instance per generate() call."""

    def __init__(self, tokenizer, budgets: dict[str, int], max_new_tokens: int, prompt_len: int):
        self.tokenizer = tokenizer
        self.budgets = budgets
        self.max_new_tokens = max_new_tokens
        self.prompt_len = prompt_len
        self.quote_id = _single_token(tokenizer, '"')
        self.close_id = _single_token(tokenizer, "}")
        self.trackers: list[_JsonTracker] = []
        self.used: list[dict[str, int]] = []
        self.forced = 0  # how many closures were forced (reported)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        if not self.trackers:
            self.trackers = [_JsonTracker() for _ in range(input_ids.shape[0])]
            self.used = [dict() for _ in range(input_ids.shape[0])]
        remaining = self.max_new_tokens - step
        for row, tracker in enumerate(self.trackers):
            if step > 0:
                tok = int(input_ids[row, -1])
                inside_before = tracker.value_key if tracker.in_string else None
                tracker.feed(self.tokenizer.decode([tok], skip_special_tokens=True))
                if inside_before is not None:
                    self.used[row][inside_before] = self.used[row].get(inside_before, 0) + 1
            key = tracker.value_key if tracker.in_string else None
            force = None
            if key is not None and not tracker.escape:
                spent = self.used[row].get(key, 0) >= self.budgets.get(key, DEFAULT_FIELD_TOKENS)
                if spent or remaining <= tracker.depth + 1:
                    force = self.quote_id
            elif key is None and not tracker.in_string and tracker.depth >= 1 and remaining <= tracker.depth:
                force = self.close_id
            if force is not None and torch.isfinite(scores[row, force]):
                # Only when the grammar allows it (e.g. not in the middle of a multi-byte character).
                keep = scores[row, force].clone()
                scores[row, :] = float("-inf")
                scores[row, force] = keep
                self.forced += 1
        return scores


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"tokenizer has no single token for {text!r}: {ids}")
    return ids[0]


# ------------------------------------------------------------------ parse + validate

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.M)


def extract_json_text(text: str) -> str:
    """The outermost {...} of a reply (models like to wrap JSON in prose or code fences)."""
    text = _FENCE.sub("", text.strip())
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if start >= 0 and end > start else text


def parse_reply(raw: str, schema: dict, lenient: bool) -> tuple[dict | None, str | None]:
    """A model's reply as (value, None) or (None, reason), as every backend records it. Lenient (free-form
    replies: HTTP servers, unconstrained local decoding): the outermost {...} is taken and malformed JSON is
    repaired (json-repair); strict (grammar-constrained decoding): the reply must be valid as it is."""
    return parse_and_validate(extract_json_text(raw) if lenient else raw, schema, repair=lenient)


def parse_and_validate(text: str, schema: dict, repair: bool = False) -> tuple[dict | None, str | None]:
    """(value, None) when the text is a schema-valid object within the word caps, else (None, reason)."""
    value, reason = None, None
    try:
        value = json.loads(text, strict=False)  # servers may leave raw control characters in strings
    except json.JSONDecodeError as err:
        reason = f"invalid JSON: {err.msg} at char {err.pos}"
        if repair:
            value, reason = _repair(text, reason)
    if value is None:
        return None, reason
    if not isinstance(value, dict):
        return None, f"not a JSON object: {type(value).__name__}"
    import jsonschema  # a second to import: only where a reply is checked, not when the CLI starts
    try:
        jsonschema.validate(value, strip_extensions(schema))
    except jsonschema.ValidationError as err:
        path = "/".join(map(str, err.absolute_path)) or "<root>"
        return None, f"schema: {path}: {err.message[:200]}"
    for key, spec in schema.get("properties", {}).items():
        cap = spec.get("x-max-words")
        if cap and isinstance(value.get(key), str) and len(value[key].split()) > cap:
            return None, f"word limit: {key} has {len(value[key].split())} words > {cap}"
    return value, None


def _repair(text: str, reason: str):
    import json_repair
    try:
        fixed = json_repair.loads(extract_json_text(text))
    except Exception as err:  # json_repair raises assorted errors on hopeless input
        return None, f"{reason}; repair failed: {err}"
    if not fixed:
        return None, f"{reason}; repair found nothing"
    return fixed, None
