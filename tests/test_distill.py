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


def _kernel_alignment_gradients(rank, size, port, result):
    """Rank ``rank`` of a gloo group: the gradient of CAT's kernel alignment of the gathered global batch,
    averaged over the ranks as the training loop averages them."""
    import torch.distributed as dist

    from nas.distill import kernel_alignment
    from nas.distributed import gather_batch, local_slice

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        torch.manual_seed(0)
        weight = torch.randn(5, 7, requires_grad=True)
        x, y = torch.randn(8, 5), torch.randn(8, 3)
        loss = -kernel_alignment(gather_batch(local_slice(x) @ weight), gather_batch(local_slice(y)))
        loss.backward()
        dist.all_reduce(weight.grad)
        if rank == 0:
            result.put((float(loss.detach()), (weight.grad / size).tolist()))
    finally:
        dist.destroy_process_group()


def test_a_loss_of_the_whole_batch_gets_the_full_batch_gradient_on_two_ranks():
    import socket

    import torch.multiprocessing as mp

    from nas.distill import kernel_alignment

    torch.manual_seed(0)
    weight = torch.randn(5, 7, requires_grad=True)
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    loss = -kernel_alignment(x @ weight, y)
    loss.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    result = context.Queue()
    mp.start_processes(_kernel_alignment_gradients, args=(2, port, result), nprocs=2, start_method="spawn")
    two_loss, two_grad = result.get(timeout=60)
    assert two_loss == pytest.approx(float(loss.detach()), abs=1e-6)
    # each rank alone (its own half's alignment) would give another gradient: the gather is what makes it equal
    assert torch.allclose(torch.tensor(two_grad), weight.grad, atol=1e-6)
    half = weight.detach().clone().requires_grad_(True)
    (-kernel_alignment(x[:4] @ half, y[:4])).backward()
    assert not torch.allclose(half.grad, weight.grad, atol=1e-3)
