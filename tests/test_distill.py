"""Intermediate-feature distillation: which features it compares, and that its scale is the teacher's."""

import copy

import pytest
import torch

from nas.distill import layer_positions
from nas.distill import make_distiller
from spaces import load_space

TEACHER = "tests/spaces/tiny_teacher.yaml"


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    space = load_space(TEACHER)
    return space.build(space.max_config()).eval()


def test_layer_positions_spread_over_the_trunk_and_end_at_the_last_block():
    assert layer_positions(9, 3) == [2, 5, 8]
    assert layer_positions(3, 5) == [0, 1, 2]
    assert layer_positions(6, 1) == [5]


def test_a_copy_of_the_teacher_with_identity_mappers_has_zero_loss(teacher):
    student = copy.deepcopy(teacher)
    distiller = make_distiller(student, teacher, layers=2, device=torch.device("cpu"))
    for mapper in distiller.mappers:
        with torch.no_grad():
            mapper.weight.copy_(torch.eye(mapper.weight.shape[0])[:, :, None, None])
            mapper.bias.zero_()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        teacher(x), student(x)
    assert distiller.loss().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        next(student.trunk[0].parameters()).add_(0.5)  # a different student is penalised
        teacher(x), student(x)
    assert distiller.loss().item() > 1e-3


def test_loss_is_relative_to_the_teacher_features_scale(teacher):
    """Scaling teacher features and mappers alike leaves the loss as it was; a plain MSE would
    grow 10^4 times, and a norm-free teacher with small features would get almost no distillation."""
    torch.manual_seed(1)
    student = load_space(TEACHER).build(load_space(TEACHER).max_config()).eval()
    distiller = make_distiller(student, teacher, layers=3, device=torch.device("cpu"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        teacher(x), student(x)
        before = distiller.loss().item()
        distiller._teacher.outputs = [t * 100 for t in distiller._teacher.outputs]
        for mapper in distiller.mappers:
            mapper.weight.mul_(100)
            mapper.bias.mul_(100)
        after = distiller.loss().item()
    assert before > 0 and after == pytest.approx(before, rel=1e-4)
