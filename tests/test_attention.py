import torch
from transformers import BertConfig, BertModel

from tinybert.distillation.attention import captured, record_attention


def _model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64)
    return BertModel(config).eval()


def test_captured_scores_equal_eager_pre_softmax_scores():
    model = _model()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0

    # eager attention computes softmax(scores + mask); spy on its input to get the scores
    model.set_attn_implementation("eager")
    eager_scores = {}
    import transformers.models.bert.modeling_bert as bert

    original = bert.eager_attention_forward

    def spy(module, query, key, value, attention_mask, scaling=None, **kwargs):
        eager_scores[module.layer_idx] = torch.matmul(query, key.transpose(2, 3)) * scaling
        return original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    bert.eager_attention_forward = spy
    try:
        with torch.no_grad():
            eager = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        bert.eager_attention_forward = original

    layers = record_attention(model, [2, 0])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(ours.attentions) == 2  # only the mapped layers record
    records = captured(ours, layers)
    assert sorted(records) == [0, 2]
    for layer in (0, 2):
        scores, pairs = records[layer]
        key_mask = mask[:, None, None, :].bool()
        # the eager scores, with the pairs attended: the real keys (the loss compares those only)
        torch.testing.assert_close(scores, eager_scores[layer])
        assert torch.equal(pairs, key_mask.expand(2, 1, 7, 7))
        # and the eager weights are the softmax of these scores over the real keys
        probabilities = torch.softmax(scores.masked_fill(~pairs, float("-inf")), dim=-1)
        torch.testing.assert_close(probabilities, eager.attentions[layer], atol=1e-6, rtol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(ours.last_hidden_state[real], eager.last_hidden_state[real], atol=1e-5, rtol=1e-5)


def test_layers_not_recorded_keep_sdpa(monkeypatch):
    model = _model()
    record_attention(model, [1])
    calls = []
    import tinybert.distillation.attention as attention

    original = attention.sdpa_attention_forward
    monkeypatch.setattr(attention, "sdpa_attention_forward",
                        lambda module, *a, **k: calls.append(module.layer_idx) or original(module, *a, **k))
    ids = torch.randint(5, 100, (1, 5))
    with torch.no_grad():
        model(input_ids=ids, output_attentions=True)
    assert calls == [0, 2]
    calls.clear()
    record_attention(model, [])
    with torch.no_grad():
        model(input_ids=ids, output_attentions=True)  # once unmarked, nothing records
    assert calls == [0, 1, 2]


def test_scores_carry_gradients_for_the_student():
    model = _model().train()
    layers = record_attention(model, [0, 1, 2])
    records = captured(model(input_ids=torch.randint(5, 100, (2, 5)), output_attentions=True), layers)
    sum(scores.pow(2).mean() for scores, _ in records.values()).backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad is not None


def test_a_layer_named_twice_is_recorded_once():
    from transformers import BertModel
    from conftest import tiny_bert_config
    model = BertModel(tiny_bert_config()).eval()
    layers = record_attention(model, [1, 1, 0])
    with torch.inference_mode():
        scores = captured(model(input_ids=torch.tensor([[101, 2023, 102]]), output_attentions=True), layers)
    assert sorted(scores) == [0, 1]
