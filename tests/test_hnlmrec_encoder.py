"""The HNLMRec query encoder's own maths and state on a tiny randomly initialised Llama (one layer, hidden
size 16): soft CF tokens, where they enter the LM, each pooling rule, the normalised head, and what is saved
and restored. Fast, so the mutation run (tests/README.md) can use it; test_hnlmrec_finetune.py runs the real
smollm2-135m."""

import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from hnlm.semantic.hnlmrec.model import CONFIG_FILE, TRAINABLE_FILE, EncoderConfig, QueryEncoder, backbone_of

VOCAB, HIDDEN, K, CF = 32, 16, 2, 3
# rows 0 and 1 unpadded / left-padded / right-padded: the last real token is at 4, 4, 2
IDS = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 3, 4, 2], [7, 1, 5, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
CF_USER = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
CF_ITEM = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.0], [0.0, 5.0, 0.0]])


def tiny_lm(dtype=torch.float32):
    """The same random one-layer Llama on every call; token embeddings have norms 1 and 3 (mean 2)."""
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=64))
    with torch.no_grad():
        table = lm.get_input_embeddings().weight
        table.copy_(F.normalize(table, dim=-1) * torch.tensor([1.0, 3.0]).repeat(VOCAB // 2)[:, None])
    return lm.to(dtype)


def encoder(cf_signal="soft", pooling="mean", **kw):
    config = EncoderConfig(out_dim=4, cf_signal=cf_signal, cf_dim=CF if cf_signal == "soft" else 0,
                           soft_tokens=K, pooling=pooling, lora_r=2, lora_alpha=4, lora_dropout=0.0, **kw)
    return QueryEncoder(tiny_lm(), config)


def unit(i):
    return F.one_hot(torch.tensor(i), HIDDEN).float()


def test_config_survives_json_and_old_configs_pool_uncentred():
    config = EncoderConfig(out_dim=8, cf_signal="soft", cf_dim=3, soft_tokens=2, pooling="last", lora_r=4,
                           lora_alpha=8, lora_dropout=0.1, lora_targets=("q_proj", "v_proj"), extra={"a": 1})
    saved = config.to_json()
    assert saved == {"out_dim": 8, "cf_signal": "soft", "cf_dim": 3, "soft_tokens": 2, "pooling": "last",
                     "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "lora_targets": ["q_proj", "v_proj"],
                     "extra": {"a": 1}}
    assert EncoderConfig.from_json(json.loads(json.dumps(saved))) == config
    assert saved["lora_targets"] == ["q_proj", "v_proj"]  # from_json leaves its argument alone
    old = {k: v for k, v in saved.items() if k != "pooling"}
    assert EncoderConfig.from_json(old).pooling == "mean"
    assert "pooling" not in old


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="cf_signal"):
        encoder(cf_signal="other")
    with pytest.raises(ValueError, match="pooling"):
        encoder(pooling="max")
    with pytest.raises(ValueError, match="cf_dim"):
        QueryEncoder(tiny_lm(), EncoderConfig(cf_signal="soft", cf_dim=0))
    QueryEncoder(tiny_lm(), EncoderConfig(cf_signal="soft", cf_dim=1))  # the smallest teacher is fine


def test_new_modules_buffers_and_their_parameters():
    enc = encoder()
    assert (enc.head.in_features, enc.head.out_features) == (HIDDEN, 4)
    for proj in (enc.soft_user, enc.soft_item):
        assert (proj.in_features, proj.out_features) == (CF, K * HIDDEN)
    assert float(enc.emb_norm) == pytest.approx(2.0)
    assert torch.equal(enc.pool_mean, torch.zeros(HIDDEN)) and not bool(enc.centred)
    own = [enc.head.weight, enc.head.bias, enc.soft_user.weight, enc.soft_user.bias, enc.soft_item.weight,
           enc.soft_item.bias]
    assert {id(p) for p in enc.head_parameters()} == {id(p) for p in own}
    enc.head.bias.requires_grad_(False)
    assert {id(p) for p in enc.head_parameters()} == {id(p) for p in own if p is not enc.head.bias}

    text = encoder(cf_signal="text")
    assert text.soft_user is None and text.soft_item is None
    assert {id(p) for p in text.head_parameters()} == {id(text.head.weight), id(text.head.bias)}

    bf16 = QueryEncoder(tiny_lm(torch.bfloat16), enc.config)
    lora = [p for name, p in bf16.lm.named_parameters() if "lora_" in name]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)


def test_soft_tokens_by_hand():
    """Token t of the user part is normalise(W_t normalise(u) + b_t) * 2 (the mean token-embedding norm)."""
    enc = encoder()
    with torch.no_grad():
        for proj in (enc.soft_user, enc.soft_item):
            proj.weight.zero_()
            proj.bias.zero_()
        enc.soft_user.weight[0, 0] = 1.0             # user token 0: u0 e0 + 0.8 e1
        enc.soft_user.bias[1] = 0.8
        enc.soft_user.weight[HIDDEN + 0, 1] = 1.0    # user token 1: u1 e0 + 0.6 e1
        enc.soft_user.bias[HIDDEN + 1] = 0.6
        enc.soft_item.bias[2] = 5.0                  # item tokens: e2 and e3 whatever the item vector
        enc.soft_item.bias[HIDDEN + 3] = 0.5
    out = enc.soft_tokens(CF_USER, CF_ITEM)
    assert out.shape == (3, 2 * K, HIDDEN)
    # row 0: normalise(u) = (0.6, 0.8, 0): tokens 0.6 e0 + 0.8 e1 and 0.8 e0 + 0.6 e1, both unit
    expected_user = [[0.6 * unit(0) + 0.8 * unit(1), 0.8 * unit(0) + 0.6 * unit(1)],
                     [unit(1), unit(1)],                                   # normalise(u) = e2: biases only
                     [F.normalize(unit(0) + 0.8 * unit(1), dim=0), unit(1)]]
    for row, tokens in enumerate(expected_user):
        for t, vec in enumerate(tokens):
            assert torch.allclose(out[row, t], 2 * vec, atol=1e-6), (row, t)
        assert torch.allclose(out[row, K], 2 * unit(2)) and torch.allclose(out[row, K + 1], 2 * unit(3))


def test_hidden_states_are_the_lm_states_after_the_soft_tokens():
    text = encoder(cf_signal="text")
    hidden, mask = text.hidden_states(IDS, MASK)
    assert torch.equal(mask, MASK)
    plain = text.lm(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(hidden, plain, atol=1e-6)

    soft = encoder()
    hidden, mask = soft.hidden_states(IDS, MASK, CF_USER, CF_ITEM)
    assert torch.equal(mask, torch.cat([torch.ones(3, 2 * K, dtype=MASK.dtype), MASK], dim=1))
    embeds = torch.cat([soft.soft_tokens(CF_USER, CF_ITEM), soft.lm.get_input_embeddings().weight[IDS]], dim=1)
    direct = soft.lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert hidden.shape == (3, 2 * K + 5, HIDDEN)
    assert torch.allclose(hidden, direct, atol=1e-6)


def test_each_pooling_rule_by_hand():
    hidden = encoder(cf_signal="text").hidden_states(IDS, MASK)[0].detach()
    last = torch.stack([hidden[0, 4], hidden[1, 4], hidden[2, 2]])
    mean = torch.stack([hidden[0].mean(0), hidden[1, 2:].mean(0), hidden[2, :3].mean(0)])
    assert torch.allclose(encoder(cf_signal="text", pooling="last").pooled(IDS, MASK), last, atol=1e-6)
    assert torch.allclose(encoder(cf_signal="text", pooling="mean").pooled(IDS, MASK), mean, atol=1e-6)

    centred = encoder(cf_signal="text", pooling="mean-centred")
    with pytest.raises(RuntimeError, match="fit_centring"):
        centred.pooled(IDS, MASK)
    none = torch.zeros(3, 1)
    assert centred.fit_centring([{"input_ids": IDS, "attention_mask": MASK, "cf_user": none, "cf_item": none}]) == 3
    assert torch.allclose(centred.pooled(IDS, MASK), mean - mean.mean(0), atol=1e-6)


def test_forward_is_the_unit_head_of_the_pooled_state():
    enc = encoder()
    q = enc(IDS, MASK, CF_USER, CF_ITEM)
    head = enc.head(enc.pooled(IDS, MASK, CF_USER, CF_ITEM))
    assert torch.allclose(q, head / head.norm(dim=1, keepdim=True), atol=1e-6)


def test_backbone_is_the_body_without_the_vocabulary_head():
    lm = tiny_lm()
    assert backbone_of(lm) is lm.model
    assert backbone_of(QueryEncoder(lm, EncoderConfig(cf_signal="text")).lm) is lm.model


def trained(enc):
    """`enc` with every trainable tensor moved off its initial value and the centring fitted."""
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    none = torch.zeros(3, CF)
    enc.fit_centring([{"input_ids": IDS, "attention_mask": MASK, "cf_user": none + 1, "cf_item": none - 1}])
    return enc


def test_save_and_from_saved_restore_adapter_heads_and_centring(tmp_path):
    torch.manual_seed(1)
    enc = trained(encoder(pooling="mean-centred"))
    state = enc.trainable_state()
    lm_keys = [k for k in enc.state_dict() if k.startswith("lm.")]
    assert set(state) == {k for k in enc.state_dict() if not k.startswith("lm.")} | \
        {k for k in lm_keys if "lora_" in k}
    assert any("lora_" in k for k in state) and len(state) < len(enc.state_dict())
    assert all(v.device.type == "cpu" and not v.requires_grad for v in state.values())

    enc.save(tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / CONFIG_FILE).read_text()) == enc.config.to_json()
    heads = torch.load(tmp_path / "enc" / TRAINABLE_FILE, weights_only=True)
    assert set(heads) == {k for k in state if not k.startswith("lm.")}
    assert (tmp_path / "enc" / "adapter" / "adapter_model.safetensors").exists()

    back = QueryEncoder.from_saved(tiny_lm(), tmp_path / "enc")
    assert back.config == enc.config
    restored = back.trainable_state()
    assert set(restored) == set(state) and all(torch.equal(restored[k], state[k]) for k in state)
    assert all(p.dtype == torch.float32 for name, p in back.lm.named_parameters() if "lora_" in name)
    assert torch.allclose(back(IDS, MASK, CF_USER, CF_ITEM), enc(IDS, MASK, CF_USER, CF_ITEM), atol=1e-6)

    torch.save({**heads, "stray.weight": torch.zeros(1)}, tmp_path / "enc" / TRAINABLE_FILE)
    with pytest.raises(ValueError, match="unexpected keys"):
        back.load_trainable(tmp_path / "enc")


def test_lora_follows_the_config_on_its_target_modules_only():
    enc = QueryEncoder(tiny_lm(), EncoderConfig(cf_signal="none", lora_r=3, lora_alpha=6, lora_dropout=0.25,
                                                lora_targets=("k_proj", "o_proj")))
    assert enc.soft_user is None and enc.soft_item is None
    attn = enc.lm.base_model.model.model.layers[0].self_attn
    assert {name for name, m in attn.named_children() if hasattr(m, "lora_A")} == {"k_proj", "o_proj"}
    assert attn.k_proj.lora_A["default"].weight.shape == (3, HIDDEN)
    assert attn.k_proj.scaling["default"] == 2.0                       # lora_alpha / lora_r
    assert attn.o_proj.lora_dropout["default"].p == 0.25


def test_a_bf16_lm_keeps_its_weights_and_gets_bf16_soft_tokens(tmp_path):
    enc = QueryEncoder(tiny_lm(torch.bfloat16), encoder().config)
    assert all(p.dtype == torch.bfloat16 for name, p in enc.lm.named_parameters() if "lora_" not in name)
    hidden, mask = enc.hidden_states(IDS, MASK, CF_USER, CF_ITEM)
    embeds = torch.cat([enc.soft_tokens(CF_USER, CF_ITEM).to(torch.bfloat16),
                        enc.lm.get_input_embeddings().weight[IDS]], dim=1)
    direct = enc.lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert hidden.dtype == torch.bfloat16 and torch.equal(hidden, direct)
    enc.save(tmp_path / "enc")
    back = QueryEncoder.from_saved(tiny_lm(torch.bfloat16), tmp_path / "enc")
    assert all(p.dtype == torch.bfloat16 for name, p in back.lm.named_parameters() if "lora_" not in name)


def test_messages_and_state_outside_the_lm():
    with pytest.raises(ValueError, match=r"^cf_signal='soft' needs cf_dim \(the teacher's embedding size\)$"):
        QueryEncoder(tiny_lm(), EncoderConfig(cf_signal="soft", cf_dim=0))
    with pytest.raises(RuntimeError, match="^pooling 'mean-centred' needs fit_centring"):
        encoder(cf_signal="text", pooling="mean-centred").pooled(IDS, MASK)
    enc = encoder()  # emb_norm follows the LM's table: not part of the saved state
    assert {k for k in enc.state_dict() if not k.startswith("lm.")} == {
        "head.weight", "head.bias", "soft_user.weight", "soft_user.bias", "soft_item.weight", "soft_item.bias",
        "pool_mean", "centred"}


def test_save_makes_missing_folders_overwrites_and_writes_indented_json(tmp_path):
    enc = encoder(pooling="last")
    folder = tmp_path / "runs" / "enc"
    enc.save(folder)
    enc.save(folder)  # a resumed fine-tuning saves into the same folder again
    assert (folder / CONFIG_FILE).read_text() == json.dumps(enc.config.to_json(), indent=1)


class Stray:
    """Not a tensor: a trainable file holding it is not loaded."""


def test_load_trainable_refuses_pickled_objects_and_lists_five_unexpected_keys(tmp_path):
    enc = encoder(pooling="last")
    enc.save(tmp_path / "enc")
    heads = torch.load(tmp_path / "enc" / TRAINABLE_FILE, weights_only=True)
    torch.save({**heads, **{f"stray{i}": torch.zeros(1) for i in range(6)}}, tmp_path / "enc" / TRAINABLE_FILE)
    with pytest.raises(ValueError, match=r"unexpected keys \['stray0', 'stray1', 'stray2', 'stray3', 'stray4'\]$"):
        enc.load_trainable(tmp_path / "enc")
    torch.save({**heads, "stray": Stray()}, tmp_path / "enc" / TRAINABLE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        enc.load_trainable(tmp_path / "enc")
