"""Cross-entropy of a linear output layer without materialising its (tokens x vocabulary) logits.

The output layer's logits are the largest activation of a small language model's step:
tokens x vocabulary in fp32, and their gradient as large again (16 x 512 tokens at a 32k
vocabulary: 1 GiB each). Here the layer and the loss run ``chunk`` tokens at a time, and each
chunk's logit gradients (softmax minus one-hot) become the hidden states' and the weight's
gradients at once, in the forward pass, as liger-kernel's fused linear cross-entropy does on
GPUs; only one chunk's logits exist at a time, and the backward pass only scales the stored
gradients. Pure PyTorch, so the CPU runs (and tests) the very code a GPU runs; the loss and
gradients equal the dense ones up to float summation order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk: int,
        wants_grad: bool,
    ) -> torch.Tensor:
        exact = torch.promote_types(weight.dtype, torch.float32)  # the softmax in fp32 at least
        valid = labels != IGNORE_INDEX
        count = valid.sum().clamp(min=1).to(exact)
        total = torch.zeros((), dtype=exact, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if wants_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device) if wants_grad else None
        grad_bias = None
        if wants_grad and bias is not None:
            grad_bias = torch.zeros(bias.shape, dtype=exact, device=bias.device)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h, y, keep = hidden[rows], labels[rows].clamp(min=0), valid[rows]
            logits = torch.nn.functional.linear(h, weight, bias).to(exact)  # (n, V): this chunk's only
            log_z = torch.logsumexp(logits, dim=-1)
            total += ((log_z - logits.gather(1, y.unsqueeze(1)).squeeze(1)) * keep).sum()
            if not wants_grad:
                continue
            grad = torch.exp(logits - log_z.unsqueeze(1))  # the softmax, then minus the one-hot
            del logits
            grad[torch.arange(len(y), device=y.device), y] -= 1.0
            grad *= (keep.to(exact) / count).unsqueeze(1)
            grad_hidden[rows] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            grad_weight += grad.t() @ h.to(exact)
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        if wants_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype), grad_bias)
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output.to(grad_hidden.dtype)
        return (
            grad_hidden * scale if ctx.needs_input_grad[0] else None,
            grad_weight * scale.to(grad_weight.dtype) if ctx.needs_input_grad[1] else None,
            grad_bias * scale.to(grad_bias.dtype)
            if grad_bias is not None and ctx.needs_input_grad[2]
            else None,
            None,
            None,
            None,
        )


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """Mean cross-entropy of ``linear(hidden, weight, bias)`` against ``labels`` (-100: ignored),
    computed ``chunk`` rows at a time; ``hidden`` (N, H), ``weight`` (V, H), ``labels`` (N,).

    Why: peak memory for the output layer falls from N x V to chunk x V floats (twice over,
    with the gradient), which lets a GPU run larger micro-batches; see the module doc.
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: must be at least 1")
    # Decided here: inside the Function's forward grad mode is always off, and parameters keep
    # requires_grad under no_grad, so validation would otherwise compute every gradient too.
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, labels, chunk, wants_grad)
