"""The seq2seq and prefix objectives wired into the shared pipeline, trained and exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, T5ForConditionalGeneration

from pretrainlab.build import build_datamodule, build_objective
from pretrainlab.config import ConfigError
from pretrainlab.models.glm import GLMForBlankInfilling
from pretrainlab.objectives.span_corruption import compute_input_and_target_lengths
from pretrainlab.validation import validate


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


@pytest.mark.parametrize("layout", [None, "reference", "uniform"])
def test_seq2seq_noise_layout_reaches_the_collator_and_the_packing(compose_cfg, layout):
    """objective.noise_layout (default reference, T5's) picks the collator's masks; the packed
    length follows the layout too, so inputs still fill block_size exactly."""
    from pretrainlab.objectives.seq2seq import Seq2SeqLM
    from pretrainlab.objectives.span_corruption import sentinel_ids

    cfg = compose_cfg("objective=seq2seq", *([f"objective.noise_layout={layout}"] if layout else []))
    validate(cfg)
    assert cfg.objective.noise_layout == (layout or "reference")
    dm, module = _prepared(cfg)
    sentinels = set(sentinel_ids(module.tokenizer, 100))
    torch.manual_seed(0)
    batch = dm.collate_fn([dm.splits["train"][i] for i in range(16)])
    assert batch["input_ids"].shape == (16, 32) and bool(batch["attention_mask"].all())
    ends_with_span = [row[-2] in sentinels for row in batch["input_ids"].tolist()]
    starts_with_span = [row[0] in sentinels for row in batch["input_ids"].tolist()]
    if layout == "uniform":  # P(a row ends with noise) ~ 1/15 here
        assert not all(ends_with_span)
    else:
        assert all(ends_with_span) and not any(starts_with_span)
    # where the layouts' span clamps differ (density 0.5, span length 1), so does the packing
    settings = {"mask_probability": 0.5, "mean_noise_span_length": 1.0, "noise_layout": layout or "reference"}
    expected = compute_input_and_target_lengths(31, 0.5, 1.0, noise_layout=settings["noise_layout"])[0]
    assert Seq2SeqLM.packed_length(31, OmegaConf.create(settings)) == expected
    assert compute_input_and_target_lengths(31, 0.5, 1.0, noise_layout="reference") != (
        compute_input_and_target_lengths(31, 0.5, 1.0, noise_layout="uniform")
    )


def test_seq2seq_config_saved_before_noise_layout_keeps_its_uniform_masks(compose_cfg):
    """pretrainlab-reproduce reruns a saved config without the schema: one from before
    objective.noise_layout existed validates and still draws the masks it was trained with."""
    from pretrainlab.objectives.seq2seq import Seq2SeqLM

    saved = OmegaConf.to_container(compose_cfg("objective=seq2seq"))  # as .hydra/config.yaml holds it
    del saved["objective"]["noise_layout"]
    cfg = OmegaConf.create(saved)
    OmegaConf.set_struct(cfg, True)
    validate(cfg)
    assert (
        Seq2SeqLM.packed_length(
            31, OmegaConf.create({"mask_probability": 0.5, "mean_noise_span_length": 1.0})
        )
        == (compute_input_and_target_lengths(31, 0.5, 1.0, noise_layout="uniform")[0])
    )
    _, module = _prepared(cfg)
    assert module.build_collator().noise_layout == "uniform"


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
        (("objective=seq2seq", "objective.noise_layout=foo"), "objective.noise_layout"),
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


# -- seq2seq continuation stops where its span ends ------------------------------------------


def _rigged_seq2seq(monkeypatch):
    """A Seq2SeqLM whose T5 always writes ``<extra_id_0> w1 w2 <extra_id_1> w3 w4 w3 w4 ...``
    (never eos), and a list that records every raw decoder output ``generate`` returns."""
    from transformers import T5Config

    import pretrainlab.objectives.seq2seq as seq2seq
    from conftest import special_word_tokenizer
    from pretrainlab.objectives.span_corruption import sentinel_ids

    tok = special_word_tokenizer(8)
    s = sentinel_ids(tok, 2)
    w = tok.convert_tokens_to_ids([f"w{i}" for i in range(8)])
    following = torch.full((len(tok),), w[5])  # next decoder token, by previous decoder token
    start = tok.pad_token_id  # T5's decoder start
    for a, b in [
        (start, s[0]),
        (s[0], w[1]),
        (w[1], w[2]),
        (w[2], s[1]),
        (s[1], w[3]),
        (w[3], w[4]),
        (w[4], w[3]),
    ]:
        following[a] = b

    class Rigged(T5ForConditionalGeneration):
        """The next token depends only on the previous decoder token: log-prob 0, others -20."""

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            previous = kwargs["decoder_input_ids"]  # (B, T): the prompt, then one token a step
            logits = torch.full_like(out.logits, -20.0)  # (B, T, V)
            out.logits = logits.scatter(-1, following[previous][..., None], 0.0)
            return out

    config = T5Config(
        vocab_size=len(tok),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    module = seq2seq.Seq2SeqLM(model=Rigged(config).eval(), tokenizer=tok)
    raw: list[torch.Tensor] = []
    generate = seq2seq.generate_with

    def recording(*args, **kwargs):
        out = generate(*args, **kwargs)
        raw.append(out)
        return out

    monkeypatch.setattr(seq2seq, "generate_with", recording)
    return module, raw, s, w


@pytest.mark.parametrize(
    "strategy",
    [
        {"num_beams": 1},
        {"num_beams": 4},
        {"num_beams": 4, "num_return_sequences": 2},
        {"penalty_alpha": 0.2, "top_k": 4},
    ],
    ids=["greedy", "beam", "beam-2-returned", "contrastive"],
)
def test_seq2seq_continuation_stops_at_the_next_sentinel(monkeypatch, strategy):
    """The span behind <extra_id_0> ends at <extra_id_1>: decoding stops there (not at
    max_new_tokens), so beam search neither pays for nor ranks on text after the span."""
    from transformers import GenerationConfig

    module, raw, s, w = _rigged_seq2seq(monkeypatch)
    tok = module.tokenizer
    returned = strategy.pop("num_return_sequences", 1)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=32,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **strategy,
    )
    continuations = module.continue_ids([w[6], w[7]], config, num_return_sequences=returned)
    assert continuations[0] == [w[1], w[2]]
    # decoder start, <extra_id_0>, then exactly w1 w2 <extra_id_1>: nothing generated after it
    best = raw[-1][0].tolist()
    assert best[:5] == [tok.pad_token_id, s[0], w[1], w[2], s[1]]
    assert set(best[5:]) <= {tok.pad_token_id, tok.eos_token_id}  # filler (beam search fills with eos)
    if returned == 1:
        assert raw[-1].shape == (1, 5)
    assert config.eos_token_id == tok.eos_token_id  # the caller's config is left alone


def test_seq2seq_fill_spans_writes_past_the_second_sentinel(monkeypatch):
    """fill_spans keeps its own rule (stop at eos only): every blank's span is written."""
    from transformers import GenerationConfig

    module, raw, s, w = _rigged_seq2seq(monkeypatch)
    tok = module.tokenizer
    config = GenerationConfig(
        do_sample=False, max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    spans, filled = module.fill_spans([w[6], tok.mask_token_id, w[7], tok.mask_token_id], config)
    assert raw[-1].shape[1] == 1 + 6  # ran to max_new_tokens: <extra_id_1> did not stop it
    assert spans[0] == [w[1], w[2]] and spans[1][:2] == [w[3], w[4]]
    assert filled[:4] == [w[6], w[1], w[2], w[7]]
