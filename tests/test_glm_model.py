"""Tests for the GLM model wrapper and its decoding loop (models/glm.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, GenerationConfig, LlamaConfig, PreTrainedTokenizerFast
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from conftest import word_level_tokenizer
from pretrainlab.models.glm import (
    GLMConfig,
    GLMForBlankInfilling,
    build_glm,
    build_logits_processors,
    continue_prefix,
    fill_blanks,
    fill_blanks_to_ids,
    visibility_to_additive_mask,
)
from pretrainlab.objectives.blank_infilling import (
    IGNORE_INDEX,
    BlankInfillingCollator,
    GLMSample,
    build_glm_attention_mask,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>", "[sop]", "[eop]", "[gMASK]"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Tiny word-level tokenizer: the specials, then t0..t199."""
    return word_level_tokenizer(
        SPECIALS + [f"t{i}" for i in range(200)],
        pad_token="[PAD]",
        mask_token="[MASK]",
        eos_token="</s>",
        additional_special_tokens=["[sop]", "[eop]", "[gMASK]"],
    )


TOK = make_tokenizer()
MASK, GMASK, SOP, EOP, PAD = (
    TOK.convert_tokens_to_ids(t) for t in ("[MASK]", "[gMASK]", "[sop]", "[eop]", "[PAD]")
)


def words(*numbers: int) -> list[int]:
    return TOK.convert_tokens_to_ids([f"t{n}" for n in numbers])


def tiny_backbone(attn: str = "sdpa", hidden: int = 32, layers: int = 2) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(TOK),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=PAD,
        attn_implementation=attn,
    )


def tiny_glm(attn: str = "sdpa", seed: int = 0) -> GLMForBlankInfilling:
    torch.manual_seed(seed)
    return build_glm(tiny_backbone(attn), max_block_positions=64).eval()


def collated_batch() -> dict[str, torch.Tensor]:
    """Mixed-length, mixed-mode batch with padding."""
    torch.manual_seed(0)
    collator = BlankInfillingCollator(TOK, mode="mixed", mask_probability=0.3)
    g = torch.Generator().manual_seed(1)
    examples = [{"input_ids": torch.randint(9, 209, (n,), generator=g).tolist()} for n in (30, 17, 24)]
    return collator(examples)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "part_a_length"}


# ----------------------------------------------------------------------------- forward / loss


def test_loss_is_finite_and_matches_aligned_cross_entropy():
    model = tiny_glm()
    batch = collated_batch()
    out = model(**model_inputs(batch))
    assert torch.isfinite(out.loss)
    logits, labels = out.logits, batch["labels"]  # (B, T, V), (B, T)
    keep = labels != IGNORE_INDEX
    log_probs = F.log_softmax(logits.float(), dim=-1)  # no shift: label i scores logits i
    expected = -log_probs[keep].gather(-1, labels[keep].unsqueeze(-1)).mean()
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.block_position_embeddings.weight.grad.abs().sum() > 0


def test_part_a_length_is_accepted_and_mask_forms_agree():
    model = tiny_glm()
    batch = collated_batch()
    reference = model(**batch).logits
    as_4d = dict(model_inputs(batch), attention_mask=batch["attention_mask"].unsqueeze(1))
    as_int = dict(model_inputs(batch), attention_mask=batch["attention_mask"].long())
    torch.testing.assert_close(model(**as_4d).logits, reference)
    torch.testing.assert_close(model(**as_int).logits, reference)


def test_additive_or_2d_masks_are_rejected():
    model = tiny_glm()
    batch = model_inputs(collated_batch())
    additive = visibility_to_additive_mask(batch["attention_mask"], torch.float32)
    with pytest.raises(ValueError, match="visibility"):
        model(**dict(batch, attention_mask=additive))
    with pytest.raises(ValueError, match="attention_mask"):
        model(**dict(batch, attention_mask=torch.ones_like(batch["input_ids"])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_additive_mask_values(dtype):
    visible = torch.tensor([[[True, False], [True, True]]])  # (1, 2, 2)
    mask = visibility_to_additive_mask(visible, dtype)
    assert mask.shape == (1, 1, 2, 2) and mask.dtype == dtype
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 1] == torch.finfo(dtype).min


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_mask_is_causal_in_b_and_bidirectional_in_a(attn):
    """A future B token cannot leak backwards; any A token reaches all of A."""
    model = tiny_glm(attn)
    assert model.backbone.config._attn_implementation == attn
    batch = model_inputs(collated_batch())
    base = model(**batch).logits  # (B, T, V)
    labels = batch["labels"]
    for row in range(labels.shape[0]):
        b_pos = (labels[row] != IGNORE_INDEX).nonzero().flatten()
        a_len = int(b_pos[0])
        last_b = int(b_pos[-1])
        # change the LAST B token: every earlier position (A and B) is unaffected
        changed = batch["input_ids"].clone()
        changed[row, last_b] = 9 if changed[row, last_b] != 9 else 10
        logits = model(**dict(batch, input_ids=changed)).logits
        torch.testing.assert_close(logits[row, :last_b], base[row, :last_b], rtol=0, atol=1e-5)
        assert not torch.allclose(logits[row, last_b], base[row, last_b])
        # change the LAST A token: the FIRST A position sees it (bidirectional)
        changed = batch["input_ids"].clone()
        changed[row, a_len - 1] = 11 if changed[row, a_len - 1] != 11 else 12
        logits = model(**dict(batch, input_ids=changed)).logits
        assert (logits[row, 0] - base[row, 0]).abs().max() > 1e-4
        # the other rows never change
        others = [r for r in range(labels.shape[0]) if r != row]
        torch.testing.assert_close(logits[others], base[others])


def test_padding_is_invisible():
    model = tiny_glm()
    batch = model_inputs(collated_batch())
    base = model(**batch).logits
    is_pad = batch["input_ids"] == PAD
    assert is_pad.any()
    changed = batch["input_ids"].masked_fill(is_pad, 42)
    logits = model(**dict(batch, input_ids=changed)).logits
    real = ~is_pad
    torch.testing.assert_close(logits[real], base[real], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path):
    model = tiny_glm()
    batch = model_inputs(collated_batch())
    expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    loaded, info = GLMForBlankInfilling.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    torch.testing.assert_close(loaded.eval()(**batch).logits, expected, rtol=0, atol=0)
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(auto, GLMForBlankInfilling)
    torch.testing.assert_close(auto(**batch).logits, expected, rtol=0, atol=0)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, GLMConfig) and isinstance(config.backbone, LlamaConfig)
    assert config.max_block_positions == 64 and config.backbone.hidden_size == 32
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.backbone.config._attn_implementation == "eager"
    torch.testing.assert_close(eager(**batch).logits, expected, rtol=1e-4, atol=1e-5)


def test_resize_token_embeddings_is_saved_in_the_backbone(tmp_path):
    model = tiny_glm()
    model.resize_token_embeddings(len(TOK) + 7, mean_resizing=False)
    assert model.config.backbone.vocab_size == len(TOK) + 7
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.get_output_embeddings().weight.shape[0] == len(TOK) + 7


def test_block_embedding_initialised_like_token_embeddings():
    model = tiny_glm()
    std = model.block_position_embeddings.weight.std().item()
    assert 0.01 < std < 0.03  # initializer_range = 0.02, not nn.Embedding's N(0, 1)


# ----------------------------------------------------------------------------- decoding

TEXT = words(*range(20, 36))  # 16 tokens
ONE_BLANK = GLMSample(TEXT[:5] + [MASK] + TEXT[9:], [TEXT[5:9]], [5], [0], sop_id=SOP, eop_id=EOP)
TWO_BLANKS = GLMSample(
    TEXT[:2] + [MASK] + TEXT[4:10] + [MASK] + TEXT[13:],
    [TEXT[2:4], TEXT[10:13]],
    [2, 9],
    [0, 1],  # B in text order: the order fill_blanks decodes in
    sop_id=SOP,
    eop_id=EOP,
)
PREFIX = GLMSample(TEXT[:10] + [GMASK], [TEXT[10:]], [10], [0], is_gmask=True, sop_id=SOP, eop_id=EOP)


@pytest.fixture(scope="module")
def memorised() -> GLMForBlankInfilling:
    """A tiny model trained to memorise three infilling problems on one text."""
    torch.manual_seed(0)
    model = build_glm(tiny_backbone(hidden=64), max_block_positions=32)
    batch = BlankInfillingCollator(TOK).collate_samples([ONE_BLANK, TWO_BLANKS, PREFIX])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        optimizer.zero_grad()
        loss = model(**model_inputs(batch)).loss
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return model.eval()


def test_fill_blanks_reproduces_memorised_spans(memorised):
    assert fill_blanks(memorised, TOK, ONE_BLANK.part_a, max_new_tokens=8) == ONE_BLANK.spans
    assert fill_blanks(memorised, TOK, TWO_BLANKS.part_a, max_new_tokens=8) == TWO_BLANKS.spans
    filled = fill_blanks_to_ids(memorised, TOK, TWO_BLANKS.part_a, max_new_tokens=8)
    assert filled == TEXT


def test_continue_prefix_stops_at_eop(memorised):
    out = continue_prefix(memorised, TOK, TEXT[:10], max_new_tokens=12)
    assert out == TEXT[10:]  # 6 tokens < 12: decoding stopped at [eop]
    assert EOP not in out


def test_model_methods_take_text_or_ids(memorised):
    """The exported model's own API (no pretrainlab needed): ids in -> ids out, text in -> text out."""
    blank_text = " ".join(TOK.convert_ids_to_tokens(TWO_BLANKS.part_a))
    spans_text = [TOK.decode(span) for span in TWO_BLANKS.spans]
    assert memorised.fill_blanks(TOK, TWO_BLANKS.part_a, 8) == TWO_BLANKS.spans
    assert memorised.fill_blanks(TOK, blank_text, max_new_tokens=8) == spans_text
    prefix_text = " ".join(TOK.convert_ids_to_tokens(TEXT[:10]))
    config = GenerationConfig(max_new_tokens=12)
    assert memorised.continue_prefix(TOK, TEXT[:10], 12) == TEXT[10:]
    assert memorised.continue_prefix(TOK, prefix_text, generation_config=config) == TOK.decode(TEXT[10:])


@pytest.mark.parametrize("max_new_tokens", [1, 2, 8])
@pytest.mark.parametrize("do_sample", [False, True])
def test_cached_and_uncached_decoding_agree(memorised, max_new_tokens, do_sample):
    settings = {"do_sample": do_sample, "temperature": 1.5, "top_k": 20, "top_p": 0.95}
    runs = [
        fill_blanks(
            memorised,
            TOK,
            TWO_BLANKS.part_a,
            max_new_tokens,
            generator=torch.Generator().manual_seed(3),
            use_cache=use_cache,
            **settings,
        )
        for use_cache in (True, False)
    ]
    assert runs[0] == runs[1]
    assert all(len(span) <= max_new_tokens for span in runs[0])


def reference_contrastive(model, part_a: list[int], alpha: float, k: int, steps: int) -> list[int]:
    """Contrastive search spelt out: every candidate in its own full forward with the collator's mask.

    Context states come from a separate run of A + B so far; ``[eop]`` is not special here.
    """
    pos = part_a.index(GMASK)
    span: list[int] = []

    def run(b_ids: list[int]):
        ids = part_a + [SOP] + b_ids
        n_a, n = len(part_a), len(ids)
        out = model(
            input_ids=torch.tensor([ids]),
            attention_mask=build_glm_attention_mask(torch.tensor([n_a]), torch.tensor([n]), n),
            position_ids=torch.tensor([list(range(n_a)) + [pos] * (n - n_a)]),
            block_position_ids=torch.tensor([[0] * n_a + list(range(1, n - n_a + 1))]),
            output_hidden_states=True,
        )
        return out.logits[0, -1], out.hidden_states[-1][0]  # (V,), (n, H)

    for _ in range(steps):
        logits, context = run(span)
        probs, ids = logits.softmax(-1).topk(k)
        scores = []
        for p, v in zip(probs.tolist(), ids.tolist(), strict=True):
            h_v = run(span + [v])[1][-1]
            penalty = F.cosine_similarity(h_v[None], context).max().item()
            scores.append((1 - alpha) * p - alpha * penalty)
        span.append(ids[max(range(k), key=scores.__getitem__)].item())
    return span


@torch.no_grad()
@pytest.mark.parametrize("use_cache", [True, False])
def test_contrastive_search_matches_a_spelt_out_reference(use_cache):
    model = tiny_glm(seed=1)
    part_a = TEXT[:6] + [GMASK]
    out = fill_blanks(model, TOK, part_a, 6, penalty_alpha=0.6, top_k=4, use_cache=use_cache)
    expected = reference_contrastive(model, part_a, alpha=0.6, k=4, steps=6)
    n = len(out[0])  # a random model may emit [eop] early: compare up to it
    assert out[0] == expected[:n] and (n == 6 or expected[n] == EOP)
    greedy = fill_blanks(model, TOK, part_a, 6)
    assert out != greedy  # the penalty changed at least one choice on this model


def test_contrastive_search_with_alpha_zero_is_greedy(memorised):
    config = GenerationConfig(penalty_alpha=0.0, top_k=4, max_new_tokens=8)
    assert fill_blanks(memorised, TOK, TWO_BLANKS.part_a, generation_config=config) == TWO_BLANKS.spans
    config = GenerationConfig(penalty_alpha=1e-9, top_k=4, max_new_tokens=8)  # contrastive mode, ~greedy
    assert fill_blanks(memorised, TOK, TWO_BLANKS.part_a, generation_config=config) == TWO_BLANKS.spans


def test_sampling_with_top_k_one_is_greedy(memorised):
    config = GenerationConfig(do_sample=True, top_k=1, max_new_tokens=8)
    sampled = fill_blanks(memorised, TOK, ONE_BLANK.part_a, generation_config=config)
    assert sampled == ONE_BLANK.spans


def test_decoding_leaves_training_mode_alone(memorised):
    memorised.train()
    fill_blanks(memorised, TOK, ONE_BLANK.part_a, max_new_tokens=2)
    assert memorised.training
    memorised.eval()


def test_decoding_argument_errors(memorised):
    with pytest.raises(ValueError, match="beam search"):
        fill_blanks(memorised, TOK, ONE_BLANK.part_a, 4, num_beams=2)
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        fill_blanks(memorised, TOK, TEXT, 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fill_blanks(memorised, TOK, ONE_BLANK.part_a)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fill_blanks(memorised, TOK, ONE_BLANK.part_a, 40)  # beyond max_block_positions
    with pytest.raises(ValueError, match="unknown decoding settings"):
        fill_blanks(memorised, TOK, ONE_BLANK.part_a, 4, top_kk=3)


def test_logits_processors_from_generation_config():
    config = GenerationConfig(
        do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.2
    )
    kinds = [type(p) for p in build_logits_processors(config)]
    assert kinds == [
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        MinPLogitsWarper,
    ]
    greedy = GenerationConfig(do_sample=False, repetition_penalty=1.2)
    assert [type(p) for p in build_logits_processors(greedy)] == [RepetitionPenaltyLogitsProcessor]
