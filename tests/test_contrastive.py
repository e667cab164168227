"""Contrastive search (pretrainlab.generation.contrastive) and the decoding configs that use it.

A lookup-table model whose probabilities and hidden states are fixed by hand pins down every
choice; tiny random Llama / GPT-2 / Bloom / T5 models check the real-model paths: alpha=0 is
greedy, eos and max_new_tokens stop it, left-padded batches match single prompts, and nothing
reaches for the Hub.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    GenerationConfig,
    GenerationMixin,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import CausalLMOutput

from pretrainlab.generation import contrastive
from pretrainlab.generation.contrastive import (
    contrastive_generate,
    generate_with,
    is_contrastive,
    validate_strict,
)

PAD, EOS, A, B, C = 0, 1, 2, 3, 4


# -- a model whose every number is chosen by hand ----------------------------------------
class TableConfig(PretrainedConfig):
    model_type = "pretrainlab-table-lm"
    num_hidden_layers = 1  # generate() sizes its (unused) cache from this


class TableLM(PreTrainedModel, GenerationMixin):
    """p(next | last token) and each token's hidden state come from two fixed tables.

    The hidden state of a position depends only on its token, so cos(h_v, h_j) is the cosine
    between two rows of STATES, easy to work out by hand.
    """

    config_class = TableConfig

    def __init__(self, config: TableConfig, next_probs: torch.Tensor, states: torch.Tensor) -> None:
        super().__init__(config)
        self.post_init()  # before the tables: post_init would re-initialise them
        self.log_probs = nn.Embedding.from_pretrained(next_probs.clamp_min(1e-9).log())  # (V, V)
        self.states = nn.Embedding.from_pretrained(states)  # (V, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        hidden = self.states(input_ids)  # (N, T, H)
        return CausalLMOutput(logits=self.log_probs(input_ids), hidden_states=(hidden, hidden))


# Next-token probabilities, row = last token.
NEXT = torch.zeros(5, 5)
NEXT[A, [A, B, C]] = torch.tensor([0.5, 0.3, 0.2])
NEXT[B, [B, C, EOS]] = torch.tensor([0.6, 0.3, 0.1])
NEXT[C, [EOS, A, B]] = torch.tensor([0.7, 0.2, 0.1])
NEXT[PAD, A] = NEXT[EOS, EOS] = 1.0
# Hidden states. PAD deliberately shares B's state: if padding were not masked out of the
# degeneration penalty, B would look like a repetition after a left-padded prompt.
STATES = torch.tensor([[0.0, 1.0], [-1.0, -1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
#  cos:  a.b = 0, a.c = b.c = 0.7071, eos.a = eos.b = -0.7071, eos.c = -1, x.x = 1


@pytest.fixture(scope="module")
def table_lm() -> TableLM:
    return TableLM(TableConfig(pad_token_id=PAD, eos_token_id=EOS), NEXT, STATES).eval()


def table_config(alpha: float, k: int, max_new_tokens: int = 4) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        penalty_alpha=alpha,
        top_k=k,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )


def test_hand_checked_degeneration_penalty_overrides_greedy(table_lm):
    # alpha=0.6, k=2, prompt [a]; score = 0.4 * p - 0.6 * max cos.
    # step 1, after a:  a: 0.4*.5 - 0.6*cos(a,a)=1 = -0.40   b: 0.4*.3 - 0.6*cos(b,a)=0 = +0.12 -> b
    #   (greedy would take a, p=.5)
    # step 2, after b:  b: 0.4*.6 - 0.6*1 = -0.36   c: 0.4*.3 - 0.6*.7071 = -0.304        -> c
    # step 3, after c:  eos: 0.4*.7 - 0.6*max(-.7071, -.7071, -1) = +0.704
    #                   a: 0.4*.2 - 0.6*1 = -0.52                                         -> eos, stop
    out = contrastive_generate(table_lm, torch.tensor([[A]]), generation_config=table_config(0.6, 2))
    assert out.tolist() == [[A, B, C, EOS]]

    greedy = table_lm.generate(
        torch.tensor([[A]]),
        generation_config=GenerationConfig(
            max_new_tokens=4, do_sample=False, pad_token_id=PAD, eos_token_id=EOS
        ),
    )
    assert greedy.tolist() == [[A, A, A, A, A]]
    alpha0 = contrastive_generate(table_lm, torch.tensor([[A]]), generation_config=table_config(0.0, 2))
    assert alpha0.tolist() == greedy.tolist()


def test_hand_checked_wider_candidate_set(table_lm):
    # k=3: step 1 also scores c: 0.4*.2 - 0.6*.7071 = -0.344; b still wins (+0.12).
    # step 2, after b: b -0.36, c -0.304, eos: 0.4*.1 - 0.6*max(-.7071, -.7071) = +0.464 -> eos
    out = contrastive_generate(table_lm, torch.tensor([[A]]), generation_config=table_config(0.6, 3))
    assert out.tolist() == [[A, B, EOS]]


def test_hand_checked_left_padded_batch_masks_padding_and_pads_finished_rows(table_lm):
    # Row 0 is [a] left-padded; PAD's hidden state equals b's but must not count, so row 0
    # decodes exactly as above: b, c, eos, then PAD while row 1 goes on.
    # Row 1 = [b, a]: after a, a: 0.2 - 0.6*1 = -0.40, b: 0.12 - 0.6*cos(b,b)=1 = -0.48 -> a,
    # and the context stays {a, b}, so a every step until max_new_tokens=4.
    ids = torch.tensor([[PAD, A], [B, A]])
    mask = torch.tensor([[0, 1], [1, 1]])
    out = contrastive_generate(table_lm, ids, attention_mask=mask, generation_config=table_config(0.6, 2))
    assert out.tolist() == [[PAD, A, B, C, EOS, PAD], [B, A, A, A, A, A]]
    via_generate = table_lm.generate(
        ids, attention_mask=mask, generation_config=table_config(0.6, 2), custom_generate=contrastive_generate
    )
    assert torch.equal(via_generate, out)


def test_generate_logits_processors_apply(table_lm):
    # repetition_penalty=2 doubles the (negative) logit of a token already present: after [a],
    # a: 2*log(.5) = -1.39 < b: log(.3) = -1.20, so even alpha=0 leaves a; it must match greedy.
    config = table_config(0.0, 2)
    config.repetition_penalty = 2.0
    out = contrastive_generate(table_lm, torch.tensor([[A]]), generation_config=config)
    greedy = table_lm.generate(
        torch.tensor([[A]]),
        generation_config=GenerationConfig(
            max_new_tokens=4, do_sample=False, repetition_penalty=2.0, pad_token_id=PAD, eos_token_id=EOS
        ),
    )
    assert out[0, 1].item() == B and torch.equal(out, greedy)


def test_attention_mask_must_be_a_keyword(table_lm):
    with pytest.raises(TypeError, match="by keyword"):
        contrastive_generate(table_lm, torch.tensor([[A]]), torch.tensor([[1]]))


# -- tiny random real models -------------------------------------------------------------
VOCAB, T5_START = 64, 0


def _tiny(family: str):
    torch.manual_seed(0)
    # No eos in the models' own configs, so that eos=None in a GenerationConfig really means none.
    special = {"pad_token_id": 0, "eos_token_id": None, "bos_token_id": 1}
    if family == "llama":
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            **special,
        )
        return LlamaForCausalLM(config).eval()
    if family == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=64, **special)
        return GPT2LMHeadModel(config).eval()
    if family == "bloom":
        return BloomForCausalLM(
            BloomConfig(vocab_size=VOCAB, hidden_size=16, n_layer=1, n_head=2, **special)
        ).eval()
    config = T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=None,
        decoder_start_token_id=T5_START,
    )
    return T5ForConditionalGeneration(config).eval()


MODELS: dict[str, nn.Module] = {}


def tiny(family: str):
    """One random tiny model per family, built once (seeded, so always the same weights)."""
    if family not in MODELS:
        MODELS[family] = _tiny(family)
    return MODELS[family]


def gen_config(
    alpha: float = 0.6, k: int = 4, max_new_tokens: int = 10, eos: int | None = 2
) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        penalty_alpha=alpha,
        top_k=k,
        pad_token_id=0,
        eos_token_id=eos,
    )


def greedy_config(max_new_tokens: int = 10, eos: int | None = 2) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=eos)


PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13]]


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize(("family", "k"), [("llama", 1), ("llama", 4), ("gpt2", 4), ("bloom", 4), ("t5", 4)])
def test_alpha_zero_is_greedy(family, k):
    model = tiny(family)
    ids, mask = left_padded(PROMPTS)
    out = contrastive_generate(model, ids, attention_mask=mask, generation_config=gen_config(alpha=0.0, k=k))
    greedy = model.generate(ids, attention_mask=mask, generation_config=greedy_config())
    assert torch.equal(out, greedy)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bloom", "t5"])
def test_left_padded_batch_matches_each_prompt_alone(family):
    model = tiny(family)
    config = gen_config(alpha=0.6, k=4, eos=None)
    ids, mask = left_padded(PROMPTS)
    batch = generate_with(model, ids, mask, config)
    for row, prompt in zip(batch, PROMPTS, strict=True):
        alone = generate_with(
            model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), config
        )[0]
        if model.config.is_encoder_decoder:
            assert torch.equal(row, alone)  # the decoder side is never padded
        else:
            assert torch.equal(row[ids.shape[1] - len(prompt) :], alone)
            assert (row[: ids.shape[1] - len(prompt)] == 0).all()


def _reference_contrastive(model, prompt: list[int], alpha: float, k: int, steps: int) -> list[int]:
    """The definition, one prompt, one candidate at a time, straight from the paper's formula."""
    seq = list(prompt)
    for _ in range(steps):
        out = model(torch.tensor([seq]), output_hidden_states=True)
        probs = out.logits[0, -1].softmax(-1)  # (V,)
        context = out.hidden_states[-1][0]  # (T, H)
        best, best_score = None, -float("inf")
        for p, v in zip(*probs.topk(k), strict=True):
            h_v = model(torch.tensor([[*seq, int(v)]]), output_hidden_states=True).hidden_states[-1][
                0, -1
            ]  # (H,)
            penalty = F.cosine_similarity(h_v[None], context, dim=-1).max()
            score = (1 - alpha) * p - alpha * penalty
            if score > best_score:
                best, best_score = int(v), score
        seq.append(best)
    return seq


@torch.no_grad()
def test_llama_matches_a_one_candidate_at_a_time_reference():
    model = tiny("llama")
    prompt = PROMPTS[1]
    out = contrastive_generate(
        model, torch.tensor([prompt]), generation_config=gen_config(0.6, 3, 8, eos=None)
    )
    assert out[0].tolist() == _reference_contrastive(model, prompt, alpha=0.6, k=3, steps=8)


def test_llama_respects_max_new_tokens_and_stops_at_eos():
    model = tiny("llama")
    prompt = torch.tensor([PROMPTS[0]])
    free = contrastive_generate(
        model, prompt, generation_config=gen_config(0.6, 4, max_new_tokens=12, eos=None)
    )
    assert free.shape == (1, 3 + 12)
    new = free[0, 3:].tolist()
    # Make the 4th new token the end of sequence (as an int, then inside a list).
    stop = new[3]
    first = new.index(stop)
    for eos in (stop, [63, stop]):
        out = contrastive_generate(
            model, prompt, generation_config=gen_config(0.6, 4, max_new_tokens=12, eos=eos)
        )
        assert out[0].tolist() == free[0, : 3 + first + 1].tolist()
        assert out.shape[1] - 3 <= 12


# -- routing and the network ---------------------------------------------------------------
@pytest.fixture
def offline(monkeypatch):
    """Every way transformers could fetch Hub code or files now raises."""
    import huggingface_hub
    import transformers.dynamic_module_utils as dynamic
    import transformers.utils.hub as hf_hub_utils

    def no_network(*args, **kwargs):
        raise AssertionError("the network (Hub) was touched")

    for module, name in [
        (huggingface_hub, "hf_hub_download"),
        (huggingface_hub, "snapshot_download"),
        (huggingface_hub.file_download, "hf_hub_download"),
        (hf_hub_utils, "hf_hub_download"),
        (hf_hub_utils, "cached_file"),
        (dynamic, "get_cached_module_file"),
        (GenerationMixin, "load_custom_generate"),
    ]:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, no_network)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of contrastive_generate (generate_with looks the name up when called)."""
    calls = []
    real = contrastive.contrastive_generate

    @functools.wraps(real)  # generate() reads the callable's signature
    def counted(*args, **kwargs):
        calls.append(kwargs.get("logits_processor") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(contrastive, "contrastive_generate", counted)
    return calls


def test_is_contrastive_follows_transformers_mode_detection():
    assert is_contrastive(gen_config(alpha=0.6, k=4))
    assert not is_contrastive(gen_config(alpha=0.0, k=4))
    assert not is_contrastive(gen_config(alpha=0.6, k=1))
    assert not is_contrastive(GenerationConfig(penalty_alpha=0.6, top_k=4, do_sample=True))
    assert not is_contrastive(GenerationConfig(penalty_alpha=0.6, top_k=4, num_beams=2))
    assert not is_contrastive(greedy_config())


def test_generate_with_routes_contrastive_through_custom_generate(table_lm, offline, spy):
    ids, mask = torch.tensor([[PAD, A], [B, A]]), torch.tensor([[0, 1], [1, 1]])
    out = generate_with(table_lm, ids, mask, table_config(0.6, 2))
    assert out.tolist() == [[PAD, A, B, C, EOS, PAD], [B, A, A, A, A, A]]
    assert spy == [True]  # called once, by generate, with its prepared logits processors


def test_generate_with_routes_everything_else_to_plain_generate(table_lm, offline, spy):
    ids, mask = torch.tensor([[A]]), torch.tensor([[1]])
    for config in (table_config(0.0, 2), table_config(0.6, 1), greedy_config(4, eos=EOS)):
        assert generate_with(table_lm, ids, mask, config).tolist() == [[A, A, A, A, A]]
    sampled = generate_with(
        table_lm, ids, mask, GenerationConfig(max_new_tokens=4, do_sample=True, min_p=0.05, top_k=0)
    )
    assert sampled.shape[1] <= 5
    assert spy == []


def test_generate_with_on_real_models_stays_offline(offline, spy):
    ids, mask = left_padded(PROMPTS)
    for family in ("llama", "t5"):
        out = generate_with(tiny(family), ids, mask, gen_config(0.6, 4))
        assert out.shape[0] == 2
    assert spy == [True, True]


# -- conf/decoding --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def word_tokenizer():
    from conftest import word_level_tokenizer

    tokens = ["[PAD]", "[UNK]", "</s>", "a", "b", "c"]
    return word_level_tokenizer(tokens, pad_token="[PAD]", eos_token="</s>")


def test_min_p_yaml_composes_into_a_valid_generation_config(word_tokenizer):
    from pretrainlab.infer import decoding_config, generation_config

    decoding = decoding_config(["decoding=min_p"])
    assert decoding["name"] == "min_p" and decoding["min_p"] == 0.05 and decoding["do_sample"] is True
    config = generation_config(decoding, word_tokenizer)
    assert (config.min_p, config.top_k, config.pad_token_id, config.eos_token_id) == (0.05, 0, 0, 2)
    assert not is_contrastive(config)


def test_contrastive_yaml_composes_and_validates(word_tokenizer):
    from pretrainlab.infer import decoding_config, generation_config

    decoding = decoding_config(["decoding=contrastive", "decoding.penalty_alpha=0.5"])
    assert decoding["name"] == "contrastive" and decoding["top_k"] == 4 and decoding["penalty_alpha"] == 0.5
    settings = {k: v for k, v in decoding.items() if k != "name"}
    config = GenerationConfig(**settings, pad_token_id=0, eos_token_id=2)
    validate_strict(config)  # what infer.generation_config needs for contrastive search
    assert is_contrastive(config)
    assert is_contrastive(generation_config(decoding, word_tokenizer))


def test_validate_strict_still_rejects_real_mistakes():
    validate_strict(gen_config(0.6, 4))
    with pytest.raises(ValueError, match="temperature"):
        validate_strict(GenerationConfig(penalty_alpha=0.6, top_k=4, temperature=0.7))
    with pytest.raises(ValueError, match="top_k"):  # greedy with top_k is still a mistake
        validate_strict(GenerationConfig(do_sample=False, top_k=4))
