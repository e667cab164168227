"""pretrainlab's GLM: blank infilling on a Hugging Face decoder, plus its decoding loop. Hub-style.

Standalone on purpose: this file (with ``configuration_glm.py``) is copied next to an exported
model's weights, so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` works where
pretrainlab is not installed. It imports only torch and transformers (>= 5); pretrainlab uses it
through ``pretrainlab.models.glm``. A few small helpers (token names, the decoding mask, the
contrastive-search penalty) have a twin in pretrainlab; tests/test_glm_export.py checks they agree.

The wrapper reuses an ordinary decoder-only backbone (Llama by default) and
adds what GLM needs on top of it:

* a 2D position: the backbone's own (rotary) position ids carry GLM's first
  position (location in part A), and a learned block-position embedding, added
  to the token embeddings, carries the second (offset inside a span);
* a custom visibility mask (bidirectional part A, causal part B), passed to the
  backbone as a FLOAT ADDITIVE (B, 1, Tq, Tk) mask: a bool mask would be
  silently added to the scores by eager attention and break causality;
* an aligned loss (labels are not shifted: the label at i is the token predicted at i).

``generate()`` refuses 4D masks, so decoding is a small hand-written loop
(``fill_blanks`` / ``continue_prefix``, also methods of the model) that prefills
part A into a cache and decodes one token at a time, with transformers' logits
processors. It covers greedy, sampling (temperature, top-k, top-p, min-p) and
contrastive search; beam search is not implemented.

Usage without pretrainlab (the tokenizer is the one saved in the same folder)::

    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    model.fill_blanks(tokenizer, "... [MASK] ...", max_new_tokens=10)        # one string per blank
    model.continue_prefix(tokenizer, "...", max_new_tokens=50, do_sample=True, top_p=0.9)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_glm import GLMConfig

# The special tokens GLM's corruption uses (the tokenizer saved with the model has them) and the
# label that carries no loss. Same values as pretrainlab.objectives.blank_infilling.
IGNORE_INDEX = -100
MASK_TOKEN = "[MASK]"
GMASK_TOKEN = "[gMASK]"
SOP_TOKEN = "[sop]"
EOP_TOKEN = "[eop]"


class GLMForBlankInfilling(PreTrainedModel):
    """Decoder backbone + block-position embedding trained by blank infilling.

    Not registered for AutoModelForCausalLM on purpose: it cannot run
    ``generate()`` (4D masks) and its loss uses aligned, not shifted, labels,
    so generic causal-LM code would silently misuse it.
    """

    config_class = GLMConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False  # flash kernels cannot take an arbitrary float mask
    _supports_flex_attn = False

    def __init__(self, config: GLMConfig) -> None:
        super().__init__(config)
        backbone_config = config.backbone
        if backbone_config._attn_implementation is None:
            backbone_config._attn_implementation = config._attn_implementation or "sdpa"
        self.backbone = AutoModelForCausalLM.from_config(backbone_config)
        self.block_position_embeddings = nn.Embedding(config.max_block_positions, backbone_config.hidden_size)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Init our only own module like the backbone's token embeddings.

        The backbone (a PreTrainedModel child) is initialised by its own
        ``_init_weights``; ``transformers.initialization`` functions skip
        tensors already loaded by ``from_pretrained``.
        """
        if isinstance(module, nn.Embedding):
            std = getattr(self.config.backbone, "initializer_range", 0.02)
            init.normal_(module.weight, mean=0.0, std=std)

    def get_input_embeddings(self) -> nn.Module:
        """Token embeddings live in the backbone (needed by resize/tie helpers)."""
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Delegate to the backbone, which owns the token embeddings."""
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        """Delegate to the backbone, which owns the LM head."""
        return self.backbone.get_output_embeddings()

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """Resize inside the backbone so ITS config (what gets saved) tracks vocab_size."""
        return self.backbone.resize_token_embeddings(*args, **kwargs)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        block_position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        past_key_values: Cache | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Run the backbone on token + block-position embeddings with a GLM mask.

        ``attention_mask`` is a bool/0-1 VISIBILITY mask (B, T, T) or
        (B, 1, Tq, Tk) (Tk includes cached tokens); it is turned into a float
        additive mask here so every attention backend honours it. ``labels``
        are aligned with the inputs (no shift). ``past_key_values`` is an alias
        of ``cache`` (transformers 5 renamed it).
        """
        if input_ids is None or attention_mask is None or position_ids is None:
            raise ValueError("GLM forward needs input_ids, attention_mask and position_ids")
        if block_position_ids is None:
            raise ValueError("GLM forward needs block_position_ids (0 in part A)")
        kwargs.pop("part_a_length", None)  # collator bookkeeping, not a model input
        cache = cache if cache is not None else past_key_values
        embeds = self.backbone.get_input_embeddings()(input_ids)  # (B, T, H)
        embeds = embeds + self.block_position_embeddings(block_position_ids)  # (B, T, H)
        out = self.backbone(
            inputs_embeds=embeds,
            attention_mask=visibility_to_additive_mask(attention_mask, embeds.dtype),
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        loss = aligned_lm_loss(out.logits, labels) if labels is not None else None
        return CausalLMOutputWithPast(
            loss=loss,
            logits=out.logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    # ------------------------------------------------------------- user-facing decoding
    # Thin wrappers over the module-level ``fill_blanks`` / ``continue_prefix`` (which pretrainlab
    # calls directly), for users who have only the model and its tokenizer.

    def fill_blanks(
        self,
        tokenizer: Any,
        text_or_ids: str | Sequence[int],
        max_new_tokens: int | None = None,
        generation_config: GenerationConfig | None = None,
        **decoding: Any,
    ) -> list[str] | list[list[int]]:
        """Fill every [MASK] / [gMASK] blank, left to right, GLM style (``generate`` cannot: 4D mask).

        Text in (tokenized without special tokens; each [MASK] is one blank of any length), one
        string per blank out; token ids in, one token list per blank out. ``decoding`` takes
        ``generate``-style settings (do_sample, temperature, top_k, top_p, min_p,
        repetition_penalty, penalty_alpha, generator=torch.Generator) over ``generation_config``.
        """
        spans = fill_blanks(
            self, tokenizer, _encode(tokenizer, text_or_ids), max_new_tokens, generation_config, **decoding
        )
        if isinstance(text_or_ids, str):
            return [tokenizer.decode(span, skip_special_tokens=True) for span in spans]
        return spans

    def continue_prefix(
        self,
        tokenizer: Any,
        text_or_ids: str | Sequence[int],
        max_new_tokens: int | None = None,
        generation_config: GenerationConfig | None = None,
        **decoding: Any,
    ) -> str | list[int]:
        """Continue a prefix GLM's prefix-LM way: the prefix read bidirectionally, then a [gMASK] piece.

        Text in, the continuation as text out; token ids in, its token ids out (without [eop]).
        Settings as for :meth:`fill_blanks`.
        """
        out = continue_prefix(
            self, tokenizer, _encode(tokenizer, text_or_ids), max_new_tokens, generation_config, **decoding
        )
        return tokenizer.decode(out, skip_special_tokens=True) if isinstance(text_or_ids, str) else out


def visibility_to_additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T, T) or (B, 1, Tq, Tk) visibility -> float additive (B, 1, Tq, Tk).

    0 where visible, ``finfo(dtype).min`` where hidden: the only form that the
    sdpa AND eager backends both apply correctly (eager adds bool masks).
    """
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)  # (B, 1, T, T)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"attention_mask must be (B, T, T) or (B, 1, Tq, Tk) visibility, got {tuple(mask.shape)}"
        )
    if mask.is_floating_point() and bool((mask < 0).any()):
        raise ValueError("attention_mask must be 0/1 visibility, not an additive mask")
    visible = mask.bool()
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    hidden = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    return torch.where(visible, zero, hidden)  # (B, 1, Tq, Tk)


def aligned_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of logits vs labels at the SAME position (no shift).

    GLM's collator already aligns targets (label at i = token predicted at
    i), so shifting here, as causal-LM losses do, would be off by one.
    """
    vocab = logits.shape[-1]
    return F.cross_entropy(logits.float().reshape(-1, vocab), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def _encode(tokenizer: Any, text_or_ids: str | Sequence[int]) -> list[int]:
    """Token ids of a text (no special tokens added: [MASK]/[gMASK] in it are the blanks) or ids as given."""
    if isinstance(text_or_ids, str):
        return list(tokenizer(text_or_ids, add_special_tokens=False)["input_ids"])
    return [int(t) for t in text_or_ids]


def glm_visibility(part_a_length: int, length: int) -> Tensor:
    """Bool visibility (1, T, T) of one unpadded GLM sequence: A bidirectional, B causal after A.

    A rows see all of A and nothing of B; B rows see A and B up to themselves. The padding-free
    case of the collator's ``build_glm_attention_mask`` (a test checks they agree), kept here so
    that this file needs no pretrainlab.
    """
    visible = torch.ones(length, length, dtype=torch.bool).tril()  # (T, T) causal
    visible[:, :part_a_length] = True  # every row sees all of A
    return visible.unsqueeze(0)  # (1, T, T)


def is_contrastive(generation_config: GenerationConfig) -> bool:
    """Whether ``generation_config`` asks for contrastive search, exactly when ``generate`` would.

    ``penalty_alpha > 0`` and ``top_k > 1`` with ``do_sample`` off and one beam, as transformers
    routes it; pretrainlab.generation.contrastive uses this function too, so both paths agree.
    """
    return generation_config.get_generation_mode() == GenerationMode.CONTRASTIVE_SEARCH


def degeneration_penalty(candidates: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
    """Contrastive search's penalty: each candidate's highest cosine similarity to the context.

    pretrainlab.generation.contrastive uses this function too, so both decoders score candidates
    identically. ``candidates`` (B, k, H) and ``context`` (B, T, H) are last-layer
    states; positions where ``context_mask`` (B, T) is 0 (padding) never count. Returns (B, k).
    """
    h_v = F.normalize(candidates.float(), dim=-1)  # (B, k, H)
    h_ctx = F.normalize(context.float(), dim=-1)  # (B, T, H)
    cosine = h_v @ h_ctx.transpose(1, 2)  # (B, k, T)
    if context_mask is not None:
        cosine = cosine.masked_fill(context_mask[:, None, :] == 0, -1.0)
    return cosine.max(dim=-1).values  # (B, k)


# --------------------------------------------------------------------------- decoding


def build_logits_processors(config: GenerationConfig) -> LogitsProcessorList:
    """Map the GenerationConfig fields we support onto transformers' processors.

    Repetition penalty applies in greedy and sampling mode; the warpers only
    when ``do_sample`` (greedy ignores them, as in ``generate``).
    """
    if (config.num_beams or 1) > 1:
        raise ValueError("beam search is not supported for the blank-infilling objective yet")
    processors = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if not config.do_sample:
        return processors
    if config.temperature is not None and config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        processors.append(TopKLogitsWarper(config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        processors.append(TopPLogitsWarper(config.top_p))
    if config.min_p:
        processors.append(MinPLogitsWarper(config.min_p))
    return processors


def _resolve_generation_config(
    generation_config: GenerationConfig | None, max_new_tokens: int | None, overrides: dict
) -> GenerationConfig:
    """Copy the config and apply call-site overrides, rejecting unknown keys.

    Validated like ``GenerationConfig.update`` does, except that contrastive search may set
    ``top_k`` (its number of candidates) without transformers warning that it is ignored.
    """
    config = copy.deepcopy(generation_config) if generation_config else GenerationConfig()
    unused = sorted(key for key in overrides if not hasattr(config, key))
    if unused:
        raise ValueError(f"unknown decoding settings: {unused}")
    for key, value in overrides.items():
        setattr(config, key, value)
    user_set = set(overrides)
    if is_contrastive(config):  # transformers warns about top_k unless do_sample counts as set and top_k not
        user_set = (user_set - {"top_k"}) | {"do_sample"}
    config.validate(user_set_attributes=user_set)
    if max_new_tokens is not None:
        config.max_new_tokens = max_new_tokens
    if not config.max_new_tokens or config.max_new_tokens < 1:
        raise ValueError("max_new_tokens must be given (>= 1) as an argument or in generation_config")
    return config


def _choose(
    logits: Tensor,
    context: Tensor,
    processors: LogitsProcessorList,
    do_sample: bool,
    generator: torch.Generator | None,
) -> int:
    """Pick the next token from (1, V) logits: argmax or a processed sample."""
    scores = processors(context, logits.float())  # (1, V)
    if not do_sample:
        return int(scores.argmax(-1))
    probs = scores.softmax(-1)  # (1, V)
    return int(torch.multinomial(probs, 1, generator=generator))


class _Decoder:
    """Shared state of one decoding call (A, B so far, settings).

    Two interchangeable model runners: the cached one (part A prefilled once,
    then one token per call) and an uncached reference that recomputes A + B
    with the training collator's 4D mask (``glm_visibility``); tests check that they decode alike.
    """

    def __init__(
        self,
        model: GLMForBlankInfilling,
        part_a: list[int],
        sop_id: int,
        eop_id: int,
        config: GenerationConfig,
        generator: torch.Generator | None,
        use_cache: bool,
    ) -> None:
        self.model = model
        self.device = model.device
        self.part_a = part_a
        self.sop_id = sop_id
        self.eop_id = eop_id
        self.max_new = int(config.max_new_tokens)
        self.do_sample = bool(config.do_sample)
        self.processors = build_logits_processors(config)
        self.generator = generator
        self.use_cache = use_cache
        self.contrastive = is_contrastive(config)
        self.penalty_alpha = float(config.penalty_alpha or 0.0)
        self.top_k = int(config.top_k or 1)
        # part B fed so far: (token, position id, block position id)
        self.b_tokens: list[tuple[int, int, int]] = []
        self.cache: Cache | None = None
        # last-layer states of every token fed so far (A, then B), for contrastive search
        self.hidden = torch.empty(0, model.config.backbone.hidden_size, device=self.device)  # (n, H)
        if self.max_new + 1 >= model.config.max_block_positions:
            raise ValueError(
                f"max_new_tokens must be < max_block_positions - 1 ({model.config.max_block_positions})"
            )

    def context(self) -> Tensor:
        """All tokens the model has seen (for repetition penalty), (1, n)."""
        ids = self.part_a + [t for t, _, _ in self.b_tokens]
        return torch.tensor([ids], device=self.device)

    def fill(self, mask_positions: list[int]) -> list[list[int]]:
        """Decode one span per blank, left to right; later blanks see earlier ones."""
        if self.use_cache:
            self._prefill()
        spans: list[list[int]] = []
        for j, pos in enumerate(mask_positions):
            span, pending = self._decode_span(pos)
            spans.append(span)
            if pending is not None and j + 1 < len(mask_positions):
                self._step(*pending)  # feed the truncated span's last token for later blanks
        return spans

    def _decode_span(self, pos: int) -> tuple[list[int], tuple | None]:
        """Decode from [sop] until [eop] or max_new tokens; return span + unfed token."""
        span: list[int] = []
        last = self.sop_id
        for block in range(1, self.max_new + 1):
            logits = self._step(last, pos, block)  # (1, V)
            if self.contrastive:
                tok = self._contrastive_choice(logits, pos, block + 1)
            else:
                tok = _choose(logits, self.context(), self.processors, self.do_sample, self.generator)
            if tok == self.eop_id:
                return span, None
            span.append(tok)
            last = tok
        return span, (last, pos, self.max_new + 1)

    def _contrastive_choice(self, logits: Tensor, pos: int, block: int) -> int:
        """Contrastive search's pick (see generation.contrastive) among the top-k next tokens.

        Every candidate is run once, at (pos, block), seeing A and B so far but
        not the other candidates; its state is compared with those of all tokens
        fed so far. The winner is fed again by the next ``_step``.
        """
        scores = self.processors(self.context(), logits.float())  # (1, V)
        top_probs, top_ids = scores.softmax(-1).topk(self.top_k, dim=-1)  # (1, k), (1, k)
        cand_hidden = self._candidate_states(top_ids[0], pos, block)  # (k, H)
        penalty = degeneration_penalty(cand_hidden[None], self.hidden[None])  # (1, k)
        contrastive_score = (1.0 - self.penalty_alpha) * top_probs - self.penalty_alpha * penalty  # (1, k)
        return int(top_ids[0, contrastive_score[0].argmax()])

    # ----------------------------------------------------------------- model runners

    def _prefill(self) -> None:
        """Run part A once, bidirectionally, into a fresh DynamicCache."""
        n = len(self.part_a)
        self.cache = DynamicCache(config=self.model.config.backbone)
        out = self.model(
            input_ids=torch.tensor([self.part_a], device=self.device),
            attention_mask=torch.ones(1, 1, n, n, dtype=torch.bool, device=self.device),
            position_ids=torch.arange(n, device=self.device).unsqueeze(0),
            block_position_ids=torch.zeros(1, n, dtype=torch.long, device=self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=self.contrastive,
        )
        if self.contrastive:
            self.hidden = out.hidden_states[-1][0]  # (n, H)

    def _step(self, token: int, pos: int, block: int) -> Tensor:
        """Feed one B token and return the next-token logits (1, V).

        Cached: the token sees all of A and all earlier B tokens through the
        cache. Uncached: A + B are recomputed with the collator's 4D mask.
        """
        self.b_tokens.append((token, pos, block))
        if self.use_cache:
            n_keys = len(self.part_a) + len(self.b_tokens)
            out = self.model(
                input_ids=torch.tensor([[token]], device=self.device),
                attention_mask=torch.ones(1, 1, 1, n_keys, dtype=torch.bool, device=self.device),
                position_ids=torch.tensor([[pos]], device=self.device),
                block_position_ids=torch.tensor([[block]], device=self.device),
                cache=self.cache,
                use_cache=True,
                output_hidden_states=self.contrastive,
            )
            if self.contrastive:
                self.hidden = torch.cat([self.hidden, out.hidden_states[-1][0]])  # (n, H)
            return out.logits[:, -1]  # (1, V)
        out = self._full_forward(self._full_inputs(), self._full_mask(extra=0), keep=1)
        if self.contrastive:
            self.hidden = out.hidden_states[-1][0]  # (n, H): A's states do not depend on B
        return out.logits[:, -1]  # (1, V)

    def _candidate_states(self, candidates: Tensor, pos: int, block: int) -> Tensor:
        """Last-layer states (k, H) of k candidate next tokens, each placed at (pos, block).

        All k go through the model in one call as k extra tokens that see the
        context (A + B so far) and themselves only; the cache is cropped back
        afterwards, so the candidates leave no trace.
        """
        k = len(candidates)
        if self.use_cache:
            n_keys = len(self.part_a) + len(self.b_tokens)
            mask = torch.zeros(1, 1, k, n_keys + k, dtype=torch.bool, device=self.device)
            mask[..., :n_keys] = True
            mask[0, 0, torch.arange(k), n_keys + torch.arange(k)] = True
            out = self.model(
                input_ids=candidates[None].to(self.device),
                attention_mask=mask,
                position_ids=torch.full((1, k), pos, device=self.device),
                block_position_ids=torch.full((1, k), block, device=self.device),
                cache=self.cache,
                use_cache=True,
                output_hidden_states=True,
            )
            self.cache.crop(-k)
            return out.hidden_states[-1][0]  # (k, H)
        ids, positions, blocks = self._full_inputs()
        extended = (ids + candidates.tolist(), positions + [pos] * k, blocks + [block] * k)
        out = self._full_forward(extended, self._full_mask(extra=k), keep=0)
        return out.hidden_states[-1][0, -k:]  # (k, H)

    def _full_inputs(self) -> tuple[list[int], list[int], list[int]]:
        """Token, position and block-position ids of A + B, as the collator lays them out."""
        ids = self.part_a + [t for t, _, _ in self.b_tokens]
        positions = list(range(len(self.part_a))) + [p for _, p, _ in self.b_tokens]
        blocks = [0] * len(self.part_a) + [b for _, _, b in self.b_tokens]
        return ids, positions, blocks

    def _full_mask(self, extra: int) -> Tensor:
        """The collator's (1, T, T) mask for A + B, plus ``extra`` rows that see A + B and themselves."""
        n_a, n = len(self.part_a), len(self.part_a) + len(self.b_tokens)
        base = glm_visibility(n_a, n)  # (1, n, n)
        mask = torch.zeros(1, n + extra, n + extra, dtype=torch.bool)
        mask[:, :n, :n] = base
        mask[:, n:, :n] = True
        mask[0, n + torch.arange(extra), n + torch.arange(extra)] = True
        return mask

    def _full_forward(self, inputs: tuple[list[int], list[int], list[int]], mask: Tensor, keep: int) -> Any:
        """One uncached forward over explicit (ids, positions, blocks)."""
        ids, positions, blocks = inputs
        return self.model(
            input_ids=torch.tensor([ids], device=self.device),
            attention_mask=mask.to(self.device),
            position_ids=torch.tensor([positions], device=self.device),
            block_position_ids=torch.tensor([blocks], device=self.device),
            logits_to_keep=keep,
            output_hidden_states=self.contrastive,
        )


def special_token_id(tokenizer: Any, token: str) -> int:
    """Resolve a GLM special token, failing with a one-line error if absent (wrong tokenizer)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"tokenizer has no special token {token!r} required for GLM")
    return int(tid)


@torch.no_grad()
def fill_blanks(
    model: GLMForBlankInfilling,
    tokenizer: Any,
    input_ids: Sequence[int],
    max_new_tokens: int | None = None,
    generation_config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    **decoding: Any,
) -> list[list[int]]:
    """Fill every [MASK]/[gMASK] of part A, left to right, GLM style.

    Each blank j is decoded from [sop] with position id = its mask position
    and block positions 1, 2, ...; it stops at [eop] (not returned) or after
    ``max_new_tokens``. Later blanks attend to earlier filled spans, exactly
    as spans in part B do during training. ``decoding`` overrides
    ``generation_config`` fields (do_sample, temperature, top_k, top_p, min_p,
    repetition_penalty, penalty_alpha: contrastive search as in ``generate``).
    ``use_cache=False`` runs the slow reference loop.
    Returns one token list per blank, in text order.
    """
    config = _resolve_generation_config(generation_config, max_new_tokens, decoding)
    part_a = [int(t) for t in input_ids]
    blank_ids = {special_token_id(tokenizer, MASK_TOKEN), special_token_id(tokenizer, GMASK_TOKEN)}
    mask_positions = [i for i, t in enumerate(part_a) if t in blank_ids]
    if not mask_positions:
        raise ValueError("input_ids contain no [MASK] or [gMASK] blank to fill")
    decoder = _Decoder(
        model,
        part_a,
        special_token_id(tokenizer, SOP_TOKEN),
        special_token_id(tokenizer, EOP_TOKEN),
        config,
        generator,
        use_cache,
    )
    was_training = model.training
    model.eval()
    try:
        return decoder.fill(mask_positions)
    finally:
        model.train(was_training)


def continue_prefix(
    model: GLMForBlankInfilling,
    tokenizer: Any,
    prefix_ids: Sequence[int],
    max_new_tokens: int | None = None,
    generation_config: GenerationConfig | None = None,
    **kwargs: Any,
) -> list[int]:
    """Left-to-right generation (gmask mode): A = prefix + [gMASK], one piece.

    The prefix is attended bidirectionally, as in GLM's document-level
    objective; returns the continuation without [eop].
    """
    part_a = [int(t) for t in prefix_ids] + [special_token_id(tokenizer, GMASK_TOKEN)]
    spans = fill_blanks(model, tokenizer, part_a, max_new_tokens, generation_config, **kwargs)
    return spans[-1]


# save_pretrained copies this file (and configuration_glm.py) beside the weights and writes
# auto_map["AutoModel"]. Deliberately not an AutoModelForCausalLM: it cannot run ``generate()``
# (4D masks) and its loss uses aligned labels, so generic causal-LM code would misuse it.
GLMForBlankInfilling.register_for_auto_class("AutoModel")
