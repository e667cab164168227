"""GLM autoregressive blank infilling: corruption and batch collation.

GLM (Du et al., 2022) trains one decoder stack as both an encoder and a decoder:
spans are cut out of a text and replaced by a single mask token ("part A"),
then the model regenerates the spans autoregressively ("part B"). Part A is
attended bidirectionally, part B causally, and every B token carries a 2D
position: the position of its span's mask token in A, plus an intra-span
"block" position.

Sequence layout produced here (one row of the batch)::

    [ part A (len a) | [sop] s1 ... [sop] s2 ... (len b) | pad ... ]
    labels:  -100 ... | s1 ... [eop] s2 ... [eop]         | -100 ...

Labels are *aligned* (not shifted): ``labels[i]`` is the token to predict at
position ``i``. Spans appear in part B in a random order, as in GLM.

Blank mode follows GLM's reference code (THUDM/GLM ``blocklm_utils.py``,
``ConstructBlockStrategy``):

1. Span lengths are drawn from Poisson(lambda), zeros clamped to 1, until the
   covered count reaches ``mask_probability * L`` (L = the whole block, eos
   included). The span that crosses the target is kept with probability
   ``(target - covered_before) / span_length``, which makes the expected
   covered count equal to the target instead of systematically overshooting
   it (at least one span is always drawn).
2. The lengths are shuffled (GLM's ``rng.shuffle(masked_lengths)``). Without
   this the crossing span, which is size-biased, would always land rightmost.
3. The block is split at eos into documents (the runs of tokens between two
   eos; an eos is a boundary and is never masked) and each span, in turn, goes
   to one document that still has room for it, drawn with probability
   proportional to the document's length, so every document expects
   ``mask_probability`` of its tokens and the block's share still holds. A
   document has room while its spans, one separator between neighbours and at
   least one unmasked token fit in it; a span that fits nowhere is cut to the
   largest room left (dropped if there is none). GLM also corrupts per
   document (``sample_span_in_document``) but fills the shorter documents
   greedily to ``int(n * ratio)`` tokens and gives the longest the remainder;
   the proportional draw avoids that skew. ``spans_cross_documents=True``
   treats the whole block as one document (spans may then hold an eos).
4. Inside a document the unmasked tokens are distributed randomly into the
   gaps between its spans (GLM's ``sample_spans``), so spans never overlap,
   never touch (>= 1 unmasked token between two spans) and every document
   keeps at least one unmasked token.

gmask mode: one span at the end of the block, replaced by ``[gMASK]`` (a
prefix LM). As in GLM's gpt branch (``gpt_min_ratio``), its length is uniform
over ``int(gmask_min_ratio * L) .. L - 1`` whatever ``mask_probability`` is:
the prefix keeps one token (GLM's bound ``L - 2`` counts the [CLS] it
prepends), and every block position up to L gets trained, which generation
reads. The generated span is the end of the block even when that crosses
documents, as GLM's gpt branch does for a sample holding several documents
(it then generates past the eos): stopping at the last document boundary
would shrink the span to the last document's tail (on the built-in corpus
three 128-token blocks in four hold an eos, and only half of the gMASK rows
would then reach block position 48, the default ``max_new_tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100
MASK_TOKEN = "[MASK]"
GMASK_TOKEN = "[gMASK]"
SOP_TOKEN = "[sop]"
EOP_TOKEN = "[eop]"
MODES = ("blank", "gmask", "mixed")


def trains_gmask(mode: str, gmask_probability: float) -> bool:
    """Whether corruption ever makes a [gMASK] example: the layout GLM continues text through."""
    return mode == "gmask" or (mode == "mixed" and gmask_probability > 0)


@dataclass
class GLMSample:
    """One corrupted example with the bookkeeping needed to inspect or undo it.

    ``spans`` and ``mask_positions`` are in left-to-right (text) order;
    ``order`` is the permutation giving the order of the spans in part B.
    """

    part_a: list[int]
    spans: list[list[int]]
    mask_positions: list[int]
    order: list[int]
    is_gmask: bool = False
    sop_id: int = 0
    eop_id: int = 0

    def part_b(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """Return part B as (input_ids, labels, position_ids, block_position_ids).

        Kept on the sample so tests and the collator share one definition of
        the B layout: ``[sop] + span`` as input, ``span + [eop]`` as target.
        """
        inputs: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        blocks: list[int] = []
        for j in self.order:
            span = self.spans[j]
            inputs += [self.sop_id, *span]
            labels += [*span, self.eop_id]
            positions += [self.mask_positions[j]] * (len(span) + 1)
            blocks += list(range(1, len(span) + 2))
        return inputs, labels, positions, blocks

    def reconstruct(self) -> list[int]:
        """Rebuild the original sequence; the inverse of the corruption."""
        return reconstruct_from_parts(self.part_a, self.spans, self.mask_positions)


def reconstruct_from_parts(
    part_a: Sequence[int], spans: Sequence[Sequence[int]], mask_positions: Sequence[int]
) -> list[int]:
    """Replace the mask token at each ``mask_positions[j]`` of A by ``spans[j]``.

    This is the exact inverse of the corruption, so it lets tests prove that
    no token is lost or duplicated between part A and part B.
    """
    span_at = dict(zip(mask_positions, spans, strict=True))
    out: list[int] = []
    for pos, tok in enumerate(part_a):
        out.extend(span_at[pos] if pos in span_at else [tok])
    return out


def reconstruct_from_batch_row(
    input_ids: Tensor,
    labels: Tensor,
    position_ids: Tensor,
    block_position_ids: Tensor,
    part_a_length: int,
) -> list[int]:
    """Rebuild the original text from ONE collated row using model inputs only.

    Proves the collated tensors (not just the bookkeeping) carry the whole
    text: spans start where block position == 1, their tokens are the labels
    without the final [eop], and their location is the shared position id.
    """
    part_a = input_ids[:part_a_length].tolist()
    is_b = labels != IGNORE_INDEX  # (T,)
    starts = ((block_position_ids == 1) & is_b).nonzero().flatten().tolist()
    spans: list[list[int]] = []
    mask_positions: list[int] = []
    for start in starts:
        end = start
        while end + 1 < len(labels) and is_b[end + 1] and block_position_ids[end + 1] > 1:
            end += 1
        spans.append(labels[start:end].tolist())  # drop the trailing [eop]
        mask_positions.append(int(position_ids[start]))
    order = sorted(range(len(spans)), key=lambda j: mask_positions[j])
    return reconstruct_from_parts(part_a, [spans[j] for j in order], [mask_positions[j] for j in order])


def _special_id(tokenizer: Any, token: str) -> int:
    """Look a special token up by name, failing loudly when it is absent."""
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if tid is None or (tid == unk and token != getattr(tokenizer, "unk_token", None)):
        raise ValueError(f"tokenizer has no special token {token!r} required for GLM")
    return int(tid)


def _to_list(ids: Any) -> list[int]:
    """Accept list[int] or a 1-D tensor (the two forms datasets produce)."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise ValueError(f"input_ids must be 1-D, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return [int(t) for t in ids]


def sample_span_lengths(
    length: int, mask_probability: float, lam: float, generator: torch.Generator | None = None
) -> list[int]:
    """Draw Poisson span lengths covering ~``mask_probability * length`` tokens, in draw order.

    The crossing span is kept with probability ``remaining / span`` so the covered count is
    unbiased; :func:`allocate_spans` then fits them into the documents of the block.
    """
    if length < 2:
        return []
    target = mask_probability * length
    n_draw = int(target) + 2  # every length is >= 1, so this always crosses the target
    draws = torch.poisson(torch.full((n_draw,), float(lam)), generator=generator)
    draws = draws.clamp_(min=1).long().tolist()
    keep_last = torch.rand((), generator=generator).item()
    lengths: list[int] = []
    covered = 0
    for span in draws:
        if covered + span >= target:
            if not lengths or keep_last < (target - covered) / span:
                lengths.append(span)
            break
        lengths.append(span)
        covered += span
    return lengths


def document_segments(ids: Sequence[int], eos_id: int | None) -> list[tuple[int, int]]:
    """(start, length) of each run of non-eos tokens: the documents spans must stay inside.

    Runs, not eos-terminated pieces, so a block that starts or ends inside a document, or
    holds two eos in a row, gives no empty or eos-containing segment.
    """
    if eos_id is None:
        return [(0, len(ids))] if ids else []
    segments: list[tuple[int, int]] = []
    start = 0
    for i, tok in enumerate([*ids, eos_id]):
        if tok == eos_id:
            if i > start:
                segments.append((start, i - start))
            start = i + 1
    return segments


def allocate_spans(
    lengths: Sequence[int], segments: Sequence[tuple[int, int]], generator: torch.Generator | None = None
) -> tuple[list[int], list[int]]:
    """Give each span a document and a place in it; return (starts, lengths) in text order.

    Each span, in the given order, goes to a segment where it fits, drawn in proportion to
    the segment's length so every document expects the same masked share; a span that fits
    nowhere is cut to the largest room left. A segment with ``k`` spans of ``used`` tokens
    keeps ``max(1, k - 1)`` unmasked (separators, and one token of context), which is what
    :func:`place_spans` needs.
    """
    per_segment: list[list[int]] = [[] for _ in segments]
    used = [0] * len(segments)
    sizes = torch.tensor([float(n) for _, n in segments])
    for span in lengths:
        rooms = [n - used[d] - max(1, len(per_segment[d])) for d, (_, n) in enumerate(segments)]
        fits = [d for d, room in enumerate(rooms) if room >= span]
        if len(fits) > 1:
            d = fits[int(torch.multinomial(sizes[fits], 1, generator=generator))]
        elif fits:
            d = fits[0]
        else:
            d = max(range(len(rooms)), key=rooms.__getitem__, default=-1)
            if d < 0 or rooms[d] < 1:
                continue
            span = rooms[d]
        per_segment[d].append(span)
        used[d] += span
    placed: list[tuple[int, int]] = []
    for (offset, n), spans in zip(segments, per_segment, strict=True):
        starts = place_spans(spans, n, generator)
        placed += [(offset + start, span) for start, span in zip(starts, spans, strict=True)]
    placed.sort()
    return [start for start, _ in placed], [span for _, span in placed]


def place_spans(lengths: Sequence[int], length: int, generator: torch.Generator | None = None) -> list[int]:
    """Return sorted start offsets for non-overlapping, non-adjacent spans.

    GLM's scheme: the ``length - sum(lengths) - (k - 1)`` free unmasked tokens
    are thrown uniformly at random into the k + 1 gaps, which places spans
    anywhere in the sequence while keeping one separator between neighbours.
    """
    k = len(lengths)
    if k == 0:
        return []
    free = length - sum(lengths) - (k - 1)
    if free < 0:
        raise ValueError("spans do not fit in the sequence")
    gaps = torch.randint(0, free + 1, (k,), generator=generator).sort().values.tolist()
    starts: list[int] = []
    offset = 0
    for gap, span in zip(gaps, lengths, strict=True):
        starts.append(offset + gap)
        offset += span + 1
    return starts


def gmask_span_length(length: int, min_ratio: float, generator: torch.Generator | None = None) -> int:
    """Length of the single end span in gmask mode: uniform over ``int(min_ratio * L) .. L - 1``.

    GLM's gpt branch (``gpt_min_ratio``): long generated parts train every block position that
    generation reads, and the prefix keeps one token. No span below two tokens.
    """
    if length < 2:
        return 0
    hi = length - 1
    lo = min(hi, max(1, int(min_ratio * length)))
    return int(torch.randint(lo, hi + 1, (), generator=generator))


@dataclass
class BlankInfillingCollator:
    """Turn token blocks into GLM blank-infilling batches (see module docstring).

    ``mode`` is "blank" (Poisson spans -> [MASK]), "gmask" (one end span ->
    [gMASK], a prefix LM) or "mixed" (gmask with ``gmask_probability``).
    ``gmask_min_ratio`` is the shortest generated share of a gmask block (GLM's
    ``gpt_min_ratio``); ``spans_cross_documents`` lets blank spans hold an eos
    (GLM keeps them inside one document). ``generator`` defaults to the global
    torch RNG so ``seed_everything`` governs the corruption.
    """

    tokenizer: Any
    mask_probability: float = 0.15
    span_poisson_lambda: float = 3.0
    mode: str = "blank"
    gmask_probability: float = 0.5
    gmask_min_ratio: float = 0.5
    spans_cross_documents: bool = False
    pad_to_multiple_of: int | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self._validate()
        self.mask_id = _special_id(self.tokenizer, MASK_TOKEN)
        self.gmask_id = _special_id(self.tokenizer, GMASK_TOKEN)
        self.sop_id = _special_id(self.tokenizer, SOP_TOKEN)
        self.eop_id = _special_id(self.tokenizer, EOP_TOKEN)
        if self.tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad_token_id; GLM batches need one for padding")
        self.pad_id = int(self.tokenizer.pad_token_id)
        # The separator packing puts after every document; None = no documents to respect.
        eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_id = None if eos is None else int(eos)

    def _validate(self) -> None:
        """Reject settings that would silently produce degenerate batches."""
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"mask_probability must be in (0, 1), got {self.mask_probability}")
        if not self.span_poisson_lambda > 0:
            raise ValueError(f"span_poisson_lambda must be > 0, got {self.span_poisson_lambda}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.gmask_probability <= 1.0:
            raise ValueError(f"gmask_probability must be in [0, 1], got {self.gmask_probability}")
        if not 0.0 <= self.gmask_min_ratio <= 1.0:
            raise ValueError(f"gmask_min_ratio must be in [0, 1], got {self.gmask_min_ratio}")
        if not isinstance(self.spans_cross_documents, bool):
            raise ValueError(f"spans_cross_documents must be a bool, got {self.spans_cross_documents!r}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Corrupt each example and collate the results into padded tensors."""
        return self.collate_samples([self.corrupt(ex["input_ids"]) for ex in examples])

    def corrupt(self, input_ids: Sequence[int] | Tensor) -> GLMSample:
        """Split one sequence into part A (with mask tokens) and part B spans."""
        ids = _to_list(input_ids)
        if self._use_gmask():
            return self._corrupt_gmask(ids)
        return self._corrupt_blank(ids)

    def _use_gmask(self) -> bool:
        """Pick the objective for one example (only random in mixed mode)."""
        if self.mode != "mixed":
            return self.mode == "gmask"
        return torch.rand((), generator=self.generator).item() < self.gmask_probability

    def _corrupt_blank(self, ids: list[int]) -> GLMSample:
        """Blank mode: shuffled Poisson spans inside documents, each replaced by one [MASK]."""
        lengths = sample_span_lengths(
            len(ids), self.mask_probability, self.span_poisson_lambda, self.generator
        )
        shuffled = [lengths[i] for i in torch.randperm(len(lengths), generator=self.generator).tolist()]
        # With spans_cross_documents the whole block is one segment (no eos to split at).
        segments = document_segments(ids, None if self.spans_cross_documents else self.eos_id)
        starts, lengths = allocate_spans(shuffled, segments, self.generator)
        return self._build(ids, starts, lengths, self.mask_id, is_gmask=False)

    def _corrupt_gmask(self, ids: list[int]) -> GLMSample:
        """gmask mode: one span at the end, replaced by [gMASK]."""
        span = gmask_span_length(len(ids), self.gmask_min_ratio, self.generator)
        starts = [len(ids) - span] if span else []
        return self._build(ids, starts, [span] if span else [], self.gmask_id, is_gmask=True)

    def _build(
        self, ids: list[int], starts: list[int], lengths: list[int], mask_id: int, is_gmask: bool
    ) -> GLMSample:
        """Cut the spans out of ``ids`` and shuffle their order for part B."""
        part_a: list[int] = []
        spans: list[list[int]] = []
        mask_positions: list[int] = []
        cursor = 0
        for start, span in zip(starts, lengths, strict=True):
            part_a += ids[cursor:start]
            mask_positions.append(len(part_a))
            part_a.append(mask_id)
            spans.append(ids[start : start + span])
            cursor = start + span
        part_a += ids[cursor:]
        order = torch.randperm(len(spans), generator=self.generator).tolist()
        return GLMSample(
            part_a=part_a,
            spans=spans,
            mask_positions=mask_positions,
            order=order,
            is_gmask=is_gmask,
            sop_id=self.sop_id,
            eop_id=self.eop_id,
        )

    def collate_samples(self, samples: Sequence[GLMSample]) -> dict[str, Tensor]:
        """Pad already-corrupted samples into model inputs (public for tests)."""
        rows = [self._row(s) for s in samples]
        width = max((len(r[0]) for r in rows), default=0)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fills = (self.pad_id, IGNORE_INDEX, 0, 0)
        cols = [
            torch.tensor([r[k] + [fill] * (width - len(r[k])) for r in rows], dtype=torch.long)
            for k, fill in enumerate(fills)
        ]
        input_ids, labels, position_ids, block_position_ids = cols  # each (B, T)
        part_a_length = torch.tensor([len(s.part_a) for s in samples], dtype=torch.long)
        total_length = torch.tensor([len(r[0]) for r in rows], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": build_glm_attention_mask(part_a_length, total_length, width),
            "position_ids": position_ids,
            "block_position_ids": block_position_ids,
            "labels": labels,
            "part_a_length": part_a_length,
        }

    @staticmethod
    def _row(sample: GLMSample) -> tuple[list[int], list[int], list[int], list[int]]:
        """Concatenate A and B for one sample: (ids, labels, positions, blocks)."""
        b_ids, b_labels, b_pos, b_block = sample.part_b()
        n_a = len(sample.part_a)
        return (
            sample.part_a + b_ids,
            [IGNORE_INDEX] * n_a + b_labels,
            list(range(n_a)) + b_pos,
            [0] * n_a + b_block,
        )


def build_glm_attention_mask(part_a_length: Tensor, total_length: Tensor, width: int) -> Tensor:
    """Bool visibility (B, T, T): True where query row may attend key column.

    A rows see all of A (bidirectional); B rows see A plus B up to themselves
    (causal); pad rows see only themselves so no softmax row is empty; no real
    row ever sees a pad column.
    """
    idx = torch.arange(width)
    q = idx.view(1, -1, 1)  # (1, T, 1)
    k = idx.view(1, 1, -1)  # (1, 1, T)
    a_len = part_a_length.view(-1, 1, 1)  # (B, 1, 1)
    n_real = total_length.view(-1, 1, 1)  # (B, 1, 1)
    sees_a = k < a_len  # (B, 1, T)
    sees_b = (k >= a_len) & (k <= q) & (k < n_real)  # (B, T, T)
    real_row = q < n_real  # (B, T, 1)
    return (real_row & (sees_a | sees_b)) | (~real_row & (q == k))  # (B, T, T)
