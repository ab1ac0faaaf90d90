"""Structured output, cache and pooling: the parts of the LLM layer that need no model."""

import json

import numpy as np
import pytest
import torch

from hnlm.llm.cache import JsonlCache, call_key
from hnlm.llm.pooling import Centerer, l2_normalise, pool_hidden
from hnlm.llm.structured import (
    _JsonTracker,
    extract_json_text,
    field_budgets,
    parse_and_validate,
    parse_reply,
    strip_extensions,
)

SCHEMA = {"type": "object",
          "properties": {"summarization": {"type": "string", "x-max-tokens": 40, "x-max-words": 5},
                         "reasoning": {"type": "string", "x-max-tokens": 20}},
          "required": ["summarization", "reasoning"], "additionalProperties": False}


def test_strip_extensions_removes_only_x_keys():
    clean = strip_extensions(SCHEMA)
    assert "x-max-tokens" not in json.dumps(clean) and clean["required"] == SCHEMA["required"]
    assert "x-max-tokens" in SCHEMA["properties"]["summarization"]  # input untouched


def test_field_budgets_fit_the_total():
    budgets, total = field_budgets(SCHEMA, None)
    assert budgets == {"summarization": 40, "reasoning": 20} and total > 60
    small, total = field_budgets(SCHEMA, 40)
    assert total == 40 and sum(small.values()) < 40 and small["summarization"] > small["reasoning"]


def test_tracker_knows_which_value_string_it_is_in():
    t = _JsonTracker()
    t.feed('{"summarization": "a \\"quoted\\" wo')
    assert t.in_string and t.value_key == "summarization"
    t.feed('rd", "reasoning": "x')
    assert t.value_key == "reasoning"
    t.feed('"}')
    assert not t.in_string and t.depth == 0


@pytest.mark.parametrize("text,ok,reason", [
    ('{"summarization": "short", "reasoning": "r"}', True, None),
    ('{"summarization": "one two three four five six", "reasoning": "r"}', False, "word limit"),
    ('{"summarization": "x"}', False, "schema"),
    ('{"summarization": "x", "reasoning": "r", "extra": 1}', False, "schema"),
    ('{"summarization": "unterminated', False, "invalid JSON"),
    ('[1, 2]', False, "not a JSON object"),
])
def test_parse_and_validate(text, ok, reason):
    value, why = parse_and_validate(text, SCHEMA)
    assert (value is not None) == ok
    assert (why is None) if ok else why.startswith(reason)


def test_repair_only_when_asked():
    text = "Sure! ```json\n{'summarization': 'good film', 'reasoning': 'title',}\n```"
    assert parse_and_validate(extract_json_text(text), SCHEMA)[0] is None
    value, why = parse_and_validate(extract_json_text(text), SCHEMA, repair=True)
    assert why is None and value == {"summarization": "good film", "reasoning": "title"}


FENCED = 'Here you go:\n```json\n{"summarization": "toy film", "reasoning": "kids",}\n```\nEnjoy!'


@pytest.mark.parametrize("raw, lenient, value, reason", [
    # lenient (HTTP, unconstrained decoding): prose and fences cut away, the trailing comma repaired
    (FENCED, True, {"summarization": "toy film", "reasoning": "kids"}, None),
    ('{"summarization": "a b", "reasoning": "c"}', True, {"summarization": "a b", "reasoning": "c"}, None),
    ('{"summarization": "cut', True, None, "schema: <root>: 'reasoning' is a required property"),
    ("I liked it.", True, None, "invalid JSON"),
    # strict (grammar-constrained decoding): the reply is taken as it is
    (FENCED, False, None, "invalid JSON: Expecting value at char 0"),
    ('{"summarization": "a b", "reasoning": "c"}', False, {"summarization": "a b", "reasoning": "c"}, None),
    ('{"summarization": "one two three four five six", "reasoning": "c"}', False, None,
     "word limit: summarization has 6 words > 5"),
])
def test_parse_reply_hand_written(raw, lenient, value, reason):
    """What a backend records for a reply: exactly what the reply says, or a failure with its reason."""
    got, why = parse_reply(raw, SCHEMA, lenient)
    assert got == value
    assert why == reason if reason is None else why.startswith(reason)


def test_cache_key_depends_on_every_part():
    base = call_key("m", "p", {"t": 0}, SCHEMA)
    assert base == call_key("m", "p", {"t": 0}, SCHEMA)
    assert len({base, call_key("m2", "p", {"t": 0}, SCHEMA), call_key("m", "p2", {"t": 0}, SCHEMA),
                call_key("m", "p", {"t": 1}, SCHEMA), call_key("m", "p", {"t": 0}, None)}) == 5


def test_cache_survives_a_torn_tail_and_dedupes(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = JsonlCache(path)
    cache.put_many([{"key": "a", "ok": True}, {"key": "b", "ok": False}])
    with path.open("ab") as fh:  # a write cut short by a kill
        fh.write(b'{"key": "c", "ok": tr')
    again = JsonlCache(path)
    assert again.torn == 1 and set(again.records) == {"a", "b"}
    again.put({"key": "c", "ok": True})
    again.put({"key": "a", "ok": False})  # a later record for the same key wins
    third = JsonlCache(path)
    assert third.torn == 0 and third.get("a")["ok"] is False and len(third) == 3
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_pooling_ignores_padding_on_either_side():
    torch.manual_seed(0)
    h = torch.randn(1, 3, 4)
    mask = torch.ones(1, 3)
    left = torch.cat([torch.randn(1, 2, 4), h], 1)
    right = torch.cat([h, torch.randn(1, 2, 4)], 1)
    pooled = pool_hidden(h, mask)
    assert torch.allclose(pool_hidden(left, torch.tensor([[0, 0, 1, 1, 1]])), pooled, atol=1e-6)
    assert torch.allclose(pool_hidden(right, torch.tensor([[1, 1, 1, 0, 0]])), pooled, atol=1e-6)
    assert torch.allclose(pooled, h.mean(1), atol=1e-6)


def test_centerer_makes_cosine_meaningful():
    rng = np.random.default_rng(0)
    x = 50 + rng.standard_normal((200, 16))  # a big shared offset: raw cosines all near 1
    raw = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert (raw[:100] * raw[100:]).sum(1).min() > 0.9
    c = Centerer().fit(x)
    z = c.transform(x)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    assert abs((z[:100] * z[100:]).sum(1).mean()) < 0.1
    w = Centerer(whiten=True).fit(x).transform(torch.tensor(x, dtype=torch.float32))
    assert isinstance(w, torch.Tensor)
    cov = np.cov(w.numpy(), rowvar=False)
    assert np.allclose(cov, np.eye(16), atol=1e-2)
    restored = Centerer.from_state_dict(c.state_dict())
    assert np.allclose(restored.transform(x), z * 0 + c.transform(x))


def test_mean_pooling_by_hand_in_float32_and_zero_for_an_all_padding_row():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]],
                          dtype=torch.bfloat16)
    out = pool_hidden(hidden, torch.tensor([[1, 1, 0], [0, 0, 1]]))
    assert out.dtype == torch.float32 and out.tolist() == [[2.0, 3.0], [9.0, 10.0]]
    assert pool_hidden(hidden, torch.zeros(2, 3)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_pooling_casts_double_states_and_half_masks_to_float32():
    assert pool_hidden(torch.ones(1, 2, 3, dtype=torch.float64), torch.ones(1, 2)).dtype == torch.float32
    # 257 tokens: a bfloat16 count would round to 256
    assert pool_hidden(torch.ones(1, 257, 1), torch.ones(1, 257, dtype=torch.bfloat16)).tolist() == [[1.0]]


def test_centerer_fits_two_vectors_and_whitens_a_constant_dimension_to_zero():
    assert Centerer().fit(np.array([[0.0, 0.0], [2.0, 4.0]])).mean.tolist() == [1.0, 2.0]
    # axis 0: deviations -2, 0, 2 (variance 4); axis 1 constant (variance 0, kept finite by eps)
    x = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    z = Centerer(whiten=True).fit_transform(x)
    assert np.allclose(np.abs(z), [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], atol=1e-5)


def test_whitening_keeps_the_largest_directions_and_the_state_round_trips():
    rng = np.random.default_rng(1)
    x = 7 + rng.standard_normal((4000, 4)) * [0.5, 5.0, 1.0, 3.0]
    c = Centerer(whiten=True, dim=2).fit(x)
    z = c.transform(x)
    assert z.shape == (4000, 2) and z.dtype == np.float32
    assert np.allclose(np.cov(z, rowvar=False), np.eye(2), atol=1e-4)   # unit variance up to eps / variance
    # the kept directions are the two largest variances, in order: axis 1, then axis 3
    assert abs(np.corrcoef(z[:, 0], x[:, 1])[0, 1]) > 0.99 and abs(np.corrcoef(z[:, 1], x[:, 3])[0, 1]) > 0.99
    restored = Centerer.from_state_dict(c.state_dict())
    assert (restored.whiten, restored.eps, restored.dim) == (True, 1e-5, 2)
    assert np.array_equal(restored.transform(x), z)
    t = c.transform(torch.tensor(x[:3], dtype=torch.bfloat16))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (3, 2)
    plain = Centerer().fit(x)
    assert plain.proj is None and np.allclose(plain.transform(x), x - x.mean(0), atol=1e-4)
    assert np.allclose(Centerer().fit_transform(x), plain.transform(x))
    with pytest.raises(ValueError, match=r"^Centerer\.fit needs at least two reference vectors$"):
        Centerer().fit(x[:1])
    with pytest.raises(RuntimeError, match=r"^Centerer used before fit\(\)$"):
        Centerer().transform(x)


def test_l2_normalise_scales_rows_to_unit_length_and_leaves_zero_rows():
    assert np.allclose(l2_normalise(np.array([[0.3, 0.4, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])),
                       [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
