"""The seq2seq and prefix objectives wired into the shared pipeline, trained and exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, T5ForConditionalGeneration

from pretrainlab.config import ConfigError, validate
from pretrainlab.models.glm import GLMForBlankInfilling
from pretrainlab.objectives.span_corruption import compute_input_and_target_lengths
from pretrainlab.train import build_datamodule, build_objective


def _prepared(cfg):
    objective_cls = get_class(cfg.objective._target_)
    dm = build_datamodule(cfg, objective_cls)
    dm.setup()
    return dm, build_objective(cfg, dm)


def test_seq2seq_packs_longer_blocks_so_inputs_fill_block_size(compose_cfg):
    cfg = compose_cfg("objective=seq2seq", "data.block_size=32")
    dm, module = _prepared(cfg)
    raw, target = compute_input_and_target_lengths(32, 0.15, 3.0, max_noise_spans=100)
    assert dm.packed_length == raw > 32
    blocks = [dm.splits["train"][i] for i in range(8)]
    assert all(len(b["input_ids"]) == raw for b in blocks)
    batch = dm.collate_fn(blocks)
    assert batch["input_ids"].shape == (8, 32)
    assert bool(batch["attention_mask"].all())  # no padding in the encoder input
    assert batch["labels"].shape[1] <= target
    assert module.count_tokens(batch) == 8 * raw  # corpus tokens, sentinels not counted


def test_prefix_batches_have_glm_inputs_and_loss_only_on_part_b(compose_cfg):
    cfg = compose_cfg("objective=prefix", "objective.mode=blank")
    dm, module = _prepared(cfg)
    batch = dm.collate_fn([dm.splits["train"][i] for i in range(4)])
    assert set(batch) >= {"input_ids", "attention_mask", "position_ids", "block_position_ids", "labels"}
    part_a = batch["part_a_length"]
    for row in range(4):
        assert bool((batch["labels"][row, : part_a[row]] == -100).all())
        assert bool((batch["labels"][row, part_a[row] :] != -100).any())
    loss = module(batch).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("objective=seq2seq", "objective.mean_noise_span_length=0.5"), "objective.mean_noise_span_length"),
        (("objective=seq2seq", "objective.mask_probability=0"), "objective.mask_probability"),
        (("objective=prefix", "objective.mode=spans"), "objective.mode"),
        (("objective=prefix", "objective.gmask_probability=1.5"), "objective.gmask_probability"),
        (("objective=prefix", "objective.span_poisson_lambda=0"), "objective.span_poisson_lambda"),
        (("objective=seq2seq", "model.family=llama"), "model.family"),
        (("objective=prefix", "decoding=beam"), "decoding.num_beams"),
        (("objective=causal", "decoding=beam", "decoding.num_beams=1"), "decoding"),
        (("objective=causal", "decoding=top_p", "decoding.top_p=1.5"), "decoding.top_p"),
        (("objective=causal", "decoding=sampling", "decoding.temperature=0"), "decoding.temperature"),
    ],
)
def test_bad_settings_name_their_key(compose_cfg, overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        validate(compose_cfg(*overrides))


@pytest.mark.parametrize("objective", ["seq2seq", "prefix"])
def test_training_lowers_loss_and_exports_a_loadable_model(trained_run, objective):
    run = trained_run(objective, "trainer.max_steps=6", "trainer.val_check_interval=3")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["objective"] == objective
    assert metrics["steps"] == 6
    assert metrics["val/loss"] < metrics["val/loss_initial"]
    if objective == "seq2seq":
        model = T5ForConditionalGeneration.from_pretrained(run / "hf")
    else:
        model = AutoModel.from_pretrained(run / "hf")
        assert isinstance(model, GLMForBlankInfilling)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    vocab = model.config.vocab_size if objective == "seq2seq" else model.config.backbone.vocab_size
    assert vocab == len(AutoTokenizer.from_pretrained(run / "hf"))


def test_prefix_continues_a_plain_causal_checkpoint(trained_run, compose_cfg):
    """model.pretrained pointing at a Llama (causal) export becomes the GLM's backbone."""
    causal = trained_run("causal")
    cfg = compose_cfg(
        "objective=prefix",
        f"model.pretrained={causal / 'hf'}",
        "tokenizer=pretrained",
        f"tokenizer.pretrained={causal / 'hf'}",
    )
    _, module = _prepared(cfg)
    assert isinstance(module.model, GLMForBlankInfilling)
    source = AutoModelForCausalLM.from_pretrained(causal / "hf")
    for name, weight in source.state_dict().items():
        assert torch.equal(module.model.backbone.state_dict()[name], weight), name


@pytest.mark.parametrize("objective", ["masked", "seq2seq", "prefix"])
def test_a_token_budget_means_the_same_corpus_tokens_for_every_objective(compose_cfg, objective):
    """trainer.max_tokens counts corpus tokens: T5's longer raw blocks give it fewer steps."""
    from conftest import run_train

    budget = 300
    # Validation every 2 steps, budget of 3 or 4 steps: the final state comes after the last
    # validation during fit, and it is what the metrics and the export describe.
    cfg = compose_cfg(
        f"objective={objective}", f"trainer.max_tokens={budget}", "trainer.val_check_interval=2"
    )
    metrics = run_train(cfg)
    per_step = 4 * (compute_input_and_target_lengths(32, 0.15, 3.0)[0] if objective == "seq2seq" else 32)
    assert metrics["steps"] == -(-budget // per_step)  # ceil
    assert metrics["tokens_seen"] == metrics["steps"] * per_step
    assert budget <= metrics["tokens_seen"] < budget + per_step
    curve = (Path(cfg.paths.output_dir) / "curve.csv").read_text().splitlines()
    last_step, last_tokens, last_loss = curve[-1].split(",")
    assert (int(last_step), int(last_tokens)) == (metrics["steps"], metrics["tokens_seen"])
    assert float(last_loss) == pytest.approx(metrics["val/loss"])
