import math

import pytest
import torch

from tinybert.distillation.losses import (attention_loss, hidden_loss, prediction_loss, relation_loss,
                                         soft_cross_entropy)


def test_attention_loss_all_real_tokens_is_plain_mse():
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # batch 1, 1 head, 2 queries, 2 keys
    teacher = torch.tensor([[[[0.0, 2.0], [3.0, 6.0]]]])
    # squared errors 1, 0, 0, 4 over 4 pairs
    assert attention_loss(student, teacher, torch.tensor([[1, 1]])).item() == pytest.approx(5 / 4)


def test_attention_loss_excludes_masked_keys_and_padded_queries():
    student = torch.zeros(1, 2, 3, 3)
    teacher = torch.zeros(1, 2, 3, 3)
    teacher[0, 0, 0, 0] = 2.0  # a real (query, key) pair: counts
    teacher[0, 1, 1, 1] = 4.0  # a real pair on the second head: counts
    teacher[0, 0, 0, 2] = 100.0  # key 2 is padding: excluded
    teacher[0, 1, 2, 0] = 100.0  # query 2 is padding (the reference code kept these rows): excluded
    mask = torch.tensor([[1, 1, 0]])
    # (2² + 4²) over 2 heads × 2 real queries × 2 real keys
    assert attention_loss(student, teacher, mask).item() == pytest.approx((4 + 16) / 8)


def test_attention_loss_is_independent_of_batch_padding():
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    alone = attention_loss(student, teacher, torch.ones(1, 3))
    padded_s = torch.nn.functional.pad(student, (0, 2, 0, 2), value=7.0)
    padded_t = torch.nn.functional.pad(teacher, (0, 2, 0, 2), value=-7.0)
    padded = attention_loss(padded_s, padded_t, torch.tensor([[1, 1, 1, 0, 0]]))
    assert padded.item() == pytest.approx(alone.item(), rel=1e-6)


def test_attention_loss_needs_equal_heads():
    with pytest.raises(ValueError, match="equal head counts"):
        attention_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2), torch.ones(1, 2))


def test_hidden_loss_with_projection_by_hand():
    projection = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[2.0], [1.0]]))
    student = torch.tensor([[[1.0], [3.0], [9.0]]])  # batch 1, 3 tokens, width 1
    teacher = torch.tensor([[[2.0, 2.0], [6.0, 0.0], [0.0, 0.0]]])  # width 2
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    # projected: [2,1], [6,3] → squared errors 0+1, 0+9 over 2 tokens × 2 units
    assert hidden_loss(student, teacher, mask, projection).item() == pytest.approx(10 / 4)
    # gradients reach the projection
    hidden_loss(student, teacher, mask, projection).backward()
    assert projection.weight.grad is not None


def test_soft_cross_entropy_by_hand():
    student = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    teacher = torch.tensor([[0.0, 0.0]])  # softmax = [1/2, 1/2]
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_cross_entropy(student, teacher).item() == pytest.approx(expected)
    # mean over the batch only, not also divided by the number of classes
    doubled = soft_cross_entropy(student.repeat(2, 1), teacher.repeat(2, 1))
    assert doubled.item() == pytest.approx(expected)


def test_temperature_softens_both_sides():
    student = torch.tensor([[0.0, 2.0 * math.log(3.0)]])
    teacher = torch.tensor([[0.0, 0.0]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))  # z_S / 2 gives softmax [1/4, 3/4]
    assert soft_cross_entropy(student, teacher, temperature=2.0).item() == pytest.approx(expected)


def test_regression_prediction_loss_uses_teacher_outputs():
    student = torch.tensor([[1.0], [2.0]])
    teacher = torch.tensor([[1.5], [4.0]])
    assert prediction_loss(student, teacher, regression=True).item() == pytest.approx((0.25 + 4) / 2)


def test_relation_loss_by_the_definition():
    """MiniLM-v2: heads joined and split into 2 relation heads; KL(teacher ‖ student) of each query's
    softmax(X·Xᵀ/√d_r), averaged over relation heads and queries."""
    torch.manual_seed(0)
    teacher, student = torch.randn(1, 4, 3, 6), torch.randn(1, 3, 3, 4)  # 4 heads × 6 and 3 heads × 4

    def relations(states):  # (relation heads, queries, keys)
        joined = states[0].transpose(0, 1).reshape(3, -1)  # tokens × all units
        split = joined.view(3, 2, -1).transpose(0, 1)
        return torch.softmax(split @ split.transpose(1, 2) / split.shape[-1] ** 0.5, dim=-1)

    expected = torch.nn.functional.kl_div(relations(student).log(), relations(teacher), reduction="sum") / (2 * 3)
    assert relation_loss(student, teacher, torch.ones(1, 3), 2).item() == pytest.approx(expected.item(), rel=1e-5)


def test_relation_loss_is_independent_of_batch_padding_and_zero_for_equal_states():
    torch.manual_seed(1)
    student, teacher = torch.randn(1, 2, 3, 4), torch.randn(1, 4, 3, 4)
    alone = relation_loss(student, teacher, torch.ones(1, 3), 4)
    padded = relation_loss(torch.nn.functional.pad(student, (0, 0, 0, 2), value=9.0),
                           torch.nn.functional.pad(teacher, (0, 0, 0, 2), value=-9.0), torch.tensor([[1, 1, 1, 0, 0]]), 4)
    assert padded.item() == pytest.approx(alone.item(), rel=1e-5)
    assert relation_loss(teacher, teacher, torch.ones(1, 3), 8).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_are_float32_inside_half_precision_autocast(dtype):
    """A per-query sum of squared score differences of 120,000 (over fp16's 65,504): under fp16
    autocast the loss was inf, so the grad scaler skipped every step; under bf16 it was 399.36."""
    student, teacher = torch.zeros(1, 2, 300, 300), torch.full((1, 2, 300, 300), 20.0)
    mask = torch.ones(1, 300)
    projection = torch.nn.Linear(4, 4)
    hidden = torch.randn(1, 300, 4)
    with torch.autocast("cpu", dtype=dtype):
        assert attention_loss(student, teacher, mask).item() == 400.0
        projected_loss = hidden_loss(hidden.to(dtype), hidden, mask, projection)  # half-precision student states
    assert projected_loss.dtype == torch.float32 and torch.isfinite(projected_loss)
