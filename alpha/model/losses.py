"""Cross-entropy over the vocabulary that saves the logits as they are and one number per row.

``F.cross_entropy`` on bf16 logits under autocast first upcasts them and saves the fp32
log-probabilities for its backward: a (tokens x vocab) fp32 tensor written once and read again,
twice the size of the logits (164 MB a step for the seed model at batch 20). ``cross_entropy``
computes the same loss in fp32 from the logits in their own dtype, saves only the logits and the
fp32 log-sum-exp of each row, and rebuilds ``softmax - one_hot`` in one pass in backward. Under
``torch.compile`` the backward is one pointwise kernel; on CUDA the forward is one Triton kernel
(``alpha.model.loss_kernels``: each row read once, its target logit picked on the way), elsewhere
``torch.logsumexp`` and a gather.

The op takes logits in any layout (``flexible_layout``): Inductor pads the rows of the head's
output to 128 bytes when the vocabulary's are not (4000 bf16 logits -> a row stride of 4032), and
an op that asked for the eager strides would be handed a copy of the whole (tokens x vocab)
tensor first (0.25 ms of a batch-128 step on an H200).

``alpha::cross_entropy_grad`` is the same row pass writing the mean loss's gradient as well; the
model uses it through ``alpha.model.head_loss`` while gradients are taken on CUDA.
"""

from __future__ import annotations

from typing import Any

import torch

from alpha.model.kernel_support import kernels_available

MAX_KERNEL_VOCAB = 16384  # the kernel holds a row in registers


def _kernel_applies(logits: torch.Tensor) -> bool:
    return kernels_available(logits.device) and logits.shape[1] <= MAX_KERNEL_VOCAB


def _unit_columns(logits: torch.Tensor) -> torch.Tensor:
    """The logits as the kernels take them: rows at any stride (padded ones too), columns adjacent."""
    return logits if logits.stride(1) == 1 else logits.contiguous()


@torch.library.custom_op("alpha::logsumexp_target", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def logsumexp_target(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp of each row of (N, V) logits, each row's target logit), both fp32: the Triton
    kernel where it applies, ``reference_logsumexp_target`` elsewhere."""
    if not _kernel_applies(logits):
        return reference_logsumexp_target(logits, targets)
    from alpha.model.loss_kernels import logsumexp_target as kernel

    return kernel(_unit_columns(logits), targets.contiguous())


@logsumexp_target.register_fake
def _(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.new_empty(logits.shape[0], dtype=torch.float32), logits.new_empty(
        logits.shape[0], dtype=torch.float32
    )


def reference_logsumexp_target(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha::logsumexp_target`` in PyTorch (off CUDA, and the benchmarks' reference)."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    return lse, logits.gather(1, targets[:, None]).squeeze(1).float()


@torch.library.custom_op("alpha::cross_entropy_grad", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def cross_entropy_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(each row's cross-entropy, fp32; the mean loss's gradient ``(softmax - one_hot) / N`` in
    the logits' dtype) of (N, V) logits: the Triton kernel where it applies, PyTorch elsewhere."""
    if not _kernel_applies(logits):
        return reference_cross_entropy_grad(logits, targets)
    from alpha.model.loss_kernels import cross_entropy_grad as kernel

    return kernel(_unit_columns(logits), targets.contiguous())


@cross_entropy_grad.register_fake
def _(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.new_empty(logits.shape[0], dtype=torch.float32), logits.new_empty(logits.shape)


def reference_cross_entropy_grad(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha::cross_entropy_grad`` in PyTorch."""
    lse, target_logit = reference_logsumexp_target(logits, targets)
    probs = torch.exp(logits.float() - lse[:, None])
    probs[torch.arange(len(targets), device=logits.device), targets] -= 1.0
    return lse - target_logit, (probs / logits.shape[0]).to(logits.dtype)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if _kernel_applies(logits):  # elsewhere traced PyTorch, which Inductor can fuse
            lse, target_logits = torch.ops.alpha.logsumexp_target(logits, targets)
        else:
            lse, target_logits = reference_logsumexp_target(logits, targets)
        ctx.save_for_backward(logits, targets, lse)
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        probs = torch.exp(logits.float() - lse[:, None])
        vocab = torch.arange(logits.shape[1], device=logits.device)
        one_hot = (vocab[None, :] == targets[:, None]).float()
        grad_logits = (probs - one_hot) * (grad / logits.shape[0])
        return grad_logits.to(logits.dtype), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (N, V) logits against (N,) class indices, computed in fp32."""
    return _CrossEntropy.apply(logits, targets)
