"""objective.loss_chunk_tokens: the output layer and its cross-entropy a chunk of tokens at a
time give the dense loss and gradients (models/chunked_loss.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from pretrainlab.build import build_datamodule, build_objective
from pretrainlab.config import ConfigError
from pretrainlab.models.chunked_loss import IGNORE_INDEX, chunked_linear_cross_entropy
from pretrainlab.objectives.causal import CausalLM
from pretrainlab.validation import validate


@pytest.mark.parametrize("chunk", [1, 3, 10, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunks_give_the_dense_loss_and_gradients(chunk: int, with_bias: bool) -> None:
    """Ignored labels included, chunks that do not divide the rows, one chunk larger than all."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = (
        torch.randn(13, generator=generator, dtype=torch.float64, requires_grad=True) if with_bias else None
    )
    labels = torch.randint(0, 13, (10,), generator=generator)
    labels[[1, 4, 5]] = IGNORE_INDEX
    dense = F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=IGNORE_INDEX)
    wanted = torch.autograd.grad(dense * 2.5, [t for t in (hidden, weight, bias) if t is not None])
    loss = chunked_linear_cross_entropy(hidden, weight, bias, labels, chunk)
    got = torch.autograd.grad(loss * 2.5, [t for t in (hidden, weight, bias) if t is not None])
    assert loss.item() == pytest.approx(dense.item(), rel=1e-12)
    for a, b in zip(got, wanted, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # evaluation: the loss alone
        assert chunked_linear_cross_entropy(hidden, weight, bias, labels, chunk).item() == pytest.approx(
            dense.item()
        )


@pytest.mark.parametrize(
    "model",
    [
        LlamaForCausalLM(
            LlamaConfig(
                vocab_size=50,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=32,
            )
        ),
        GPT2LMHeadModel(  # no dropout: the two passes must see the same network
            GPT2Config(
                vocab_size=50,
                n_embd=16,
                n_layer=2,
                n_head=2,
                n_positions=32,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
            )
        ),
    ],
    ids=["llama", "gpt2"],
)
def test_a_causal_objective_with_chunks_trains_on_the_dense_loss(model: torch.nn.Module) -> None:
    """Same weights, same batch (padding ignored): the chunked objective's loss and every
    parameter's gradient are the model's own shifted next-token loss's."""
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (3, 9))
    labels = ids.clone()
    labels[2, 6:] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "_corpus_tokens": 1}
    dense, chunked = (
        CausalLM(model, tokenizer=None),
        CausalLM(copy.deepcopy(model), tokenizer=None, loss_chunk_tokens=5),
    )
    dense_loss, chunked_loss = dense(batch).loss, chunked(batch).loss
    assert chunked_loss.item() == pytest.approx(dense_loss.item(), rel=1e-5)
    dense_loss.backward()
    chunked_loss.backward()
    for (name, a), b in zip(dense.model.named_parameters(), chunked.model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_setting_reaches_the_objective_and_a_bad_value_is_refused(compose_cfg) -> None:
    cfg = compose_cfg("objective=causal", "objective.loss_chunk_tokens=7")
    datamodule = build_datamodule(cfg, get_class(cfg.objective._target_))
    datamodule.setup()
    module = build_objective(cfg, datamodule)
    assert module.settings["loss_chunk_tokens"] == 7
    for bad in (0, -5):
        with pytest.raises(ConfigError, match=rf"^objective\.loss_chunk_tokens={bad}: must be"):
            validate(
                compose_cfg("objective=causal", f"objective.loss_chunk_tokens={bad}"), with_libraries=False
            )


def test_without_gradients_only_the_loss_is_computed() -> None:
    """Validation runs under no_grad with parameters that still require gradients: one matrix
    product per chunk (the logits), not the three a training step needs."""
    hidden, weight = torch.randn(12, 6), torch.randn(13, 6, requires_grad=True)
    labels = torch.randint(0, 13, (12,))

    def products(grad: bool) -> int:
        with torch.set_grad_enabled(grad), torch.autograd.profiler.profile() as prof:
            chunked_linear_cross_entropy(hidden, weight, None, labels, 4)
        return sum(1 for e in prof.function_events if e.name in ("aten::mm", "aten::addmm"))

    assert products(grad=False) == 3 and products(grad=True) == 9


def test_a_model_that_changes_its_logits_is_refused_when_built() -> None:
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    config.final_logit_softcapping = 30.0  # what e.g. Gemma 2 does after its output layer
    with pytest.raises(
        ConfigError,
        match=r"^objective\.loss_chunk_tokens=8: LlamaForCausalLM does not end in a plain linear "
        r"output layer \(final_logit_softcapping\)",
    ):
        CausalLM(LlamaForCausalLM(config), tokenizer=None, loss_chunk_tokens=8)
    assert CausalLM(LlamaForCausalLM(config), tokenizer=None).settings == {}  # dense: fine
