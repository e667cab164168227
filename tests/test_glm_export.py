"""The prefix objective's export (``hf/``) follows the Hub convention for custom architectures.

The GLM config/model/decoding code is saved beside the weights with an ``auto_map``, so the folder
loads with ``trust_remote_code=True`` where pretrainlab is NOT installed (checked in a child
process that cannot import it), and ``import pretrainlab`` alone registers the model type (no
remote code then). The standalone code keeps its own copies of a few small helpers; the tests at
the end check that they agree with pretrainlab's.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig

from conftest import word_level_tokenizer
from pretrainlab.generation import contrastive
from pretrainlab.models.glm import build_glm, continue_prefix, fill_blanks
from pretrainlab.objectives import blank_infilling
from pretrainlab.objectives.blank_infilling import BlankInfillingCollator, GLMSample
from pretrainlab.objectives.prefix import PrefixLM

SRC = Path(__file__).resolve().parents[1] / "src"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>", "[sop]", "[eop]", "[gMASK]"]
TOK = word_level_tokenizer(
    SPECIALS + [f"t{i}" for i in range(60)],
    pad_token="[PAD]",
    mask_token="[MASK]",
    eos_token="</s>",
    additional_special_tokens=["[sop]", "[eop]", "[gMASK]"],
)
MASK, GMASK, SOP, EOP, PAD = (
    TOK.convert_tokens_to_ids(t) for t in ("[MASK]", "[gMASK]", "[sop]", "[eop]", "[PAD]")
)
TEXT = TOK.convert_tokens_to_ids([f"t{n}" for n in range(20, 32)])  # 12 tokens
BLANK = GLMSample(TEXT[:3] + [MASK] + TEXT[6:], [TEXT[3:6]], [3], [0], sop_id=SOP, eop_id=EOP)
PREFIX = GLMSample(TEXT[:7] + [GMASK], [TEXT[7:]], [7], [0], is_gmask=True, sop_id=SOP, eop_id=EOP)
BLANK_TEXT = "t20 t21 t22 [MASK] t26 t27 t28 t29 t30 t31"
PREFIX_TEXT = "t20 t21 t22 t23 t24 t25 t26"

# First lines of every child script: pretrainlab cannot be imported, whatever sys.path holds.
BLOCK_PRETRAINLAB = """
import importlib.abc
import sys


class _NoPretrainlab(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pretrainlab" or name.startswith("pretrainlab."):
            raise ImportError(f"{name}: blocked, this environment has no pretrainlab")
        return None


sys.meta_path.insert(0, _NoPretrainlab())
"""


@pytest.fixture(scope="module")
def memorised():
    """A tiny GLM trained to memorise one blank and one prefix continuation of TEXT."""
    torch.manual_seed(0)
    backbone = LlamaConfig(
        vocab_size=len(TOK),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    model = build_glm(backbone, max_block_positions=16)
    batch = BlankInfillingCollator(TOK).collate_samples([BLANK, PREFIX])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(50):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return model.eval()


@pytest.fixture(scope="module")
def exported(memorised, tmp_path_factory) -> Path:
    """The model and tokenizer written by the prefix objective's own export (what ``hf/`` holds)."""
    folder = tmp_path_factory.mktemp("run") / "hf"
    PrefixLM(model=memorised, tokenizer=TOK).export(folder)
    return folder


def model_batch() -> dict[str, torch.Tensor]:
    """A collated two-row batch (blank + prefix, with padding) as the model's inputs."""
    return BlankInfillingCollator(TOK).collate_samples([BLANK, PREFIX])


def run_child(script: str, tmp_path: Path, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter, offline, with its own HF caches; return its JSON."""
    env = dict(os.environ)
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH="",
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "custom code" not in proc.stdout + proc.stderr  # transformers never had to ask
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_holds_the_model_code_and_auto_map(exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "pretrainlab_glm"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_glm.GLMConfig",
        "AutoModel": "modeling_glm.GLMForBlankInfilling",
    }
    for name in ("configuration_glm.py", "modeling_glm.py"):
        tree = ast.parse((exported / name).read_text(encoding="utf-8"))
        imported = {
            (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "level", 0) == 0
            for alias in node.names
        }
        assert imported <= {"__future__", "copy", "collections", "typing", "torch", "transformers"}, name


CLEAN_ENV_CHILD = BLOCK_PRETRAINLAB + textwrap.dedent(
    """
    import json

    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer, GenerationConfig

    try:
        import pretrainlab  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("pretrainlab must not be importable here")

    folder, work = sys.argv[1], sys.argv[2]
    request = json.loads(open(f"{work}/request.json").read())
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # it reads config.json too
    with torch.no_grad():
        logits = model(**torch.load(f"{work}/batch.pt", weights_only=True)).logits
    torch.save(logits, f"{work}/logits.pt")
    result = {
        "config_class": f"{type(config).__module__}.{type(config).__name__}",
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "fill_ids": model.fill_blanks(tokenizer, request["blank_ids"], max_new_tokens=8),
        "fill_text": model.fill_blanks(tokenizer, request["blank_text"], max_new_tokens=8),
        "continue_ids": model.continue_prefix(tokenizer, request["prefix_ids"], max_new_tokens=8),
        "continue_text": model.continue_prefix(tokenizer, request["prefix_text"], max_new_tokens=8),
        "contrastive": model.continue_prefix(
            tokenizer, request["prefix_ids"], max_new_tokens=6, penalty_alpha=0.6, top_k=3
        ),
        "sampled": model.continue_prefix(
            tokenizer,
            request["prefix_ids"],
            generation_config=GenerationConfig(max_new_tokens=6, do_sample=True, top_k=1),
            generator=torch.Generator().manual_seed(0),
        ),
        "pretrainlab_modules": sorted(m for m in sys.modules if m.split(".")[0] == "pretrainlab"),
    }
    print(json.dumps(result))
    """
)


def test_export_loads_and_decodes_without_pretrainlab(memorised, exported, tmp_path):
    batch = model_batch()
    torch.save(batch, tmp_path / "batch.pt")
    request = {
        "blank_ids": BLANK.part_a,
        "blank_text": BLANK_TEXT,
        "prefix_ids": PREFIX.part_a[:-1],
        "prefix_text": PREFIX_TEXT,
    }
    (tmp_path / "request.json").write_text(json.dumps(request))

    result = run_child(CLEAN_ENV_CHILD, tmp_path, str(exported), str(tmp_path))

    assert result["pretrainlab_modules"] == []
    assert result["config_class"].startswith("transformers_modules.")  # the code saved beside the weights
    assert result["model_class"].startswith("transformers_modules.")
    assert result["model_class"].endswith(".modeling_glm.GLMForBlankInfilling")
    with torch.no_grad():
        expected_logits = memorised(**batch).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected_logits, rtol=0, atol=1e-6)
    # Same greedy decoding as pretrainlab's own functions, and the memorised answers.
    assert result["fill_ids"] == fill_blanks(memorised, TOK, BLANK.part_a, 8) == BLANK.spans
    assert result["fill_text"] == [TOK.decode(BLANK.spans[0])] == ["t23 t24 t25"]
    assert result["continue_ids"] == continue_prefix(memorised, TOK, PREFIX.part_a[:-1], 8) == PREFIX.spans[0]
    assert result["continue_text"] == "t27 t28 t29 t30 t31"
    assert result["contrastive"] == continue_prefix(
        memorised, TOK, PREFIX.part_a[:-1], 6, penalty_alpha=0.6, top_k=3
    )
    assert result["sampled"] == PREFIX.spans[0][:6]  # do_sample with top_k=1 is greedy


IMPORT_PRETRAINLAB_CHILD = textwrap.dedent(
    """
    import json
    import sys

    folder, work, order = sys.argv[1], sys.argv[2], sys.argv[3]
    if order == "transformers_first":
        from transformers import AutoConfig, AutoModel
    import pretrainlab  # noqa: F401

    light = "torch" not in sys.modules and "transformers" not in sys.modules
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder)  # no trust_remote_code: registered by `import pretrainlab`
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.save(model(**torch.load(f"{work}/batch.pt", weights_only=True)).logits, f"{work}/logits.pt")
    print(json.dumps({
        "light": light,
        "config_class": f"{type(config).__module__}.{type(config).__name__}",
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
    }))
    """
)


@pytest.mark.parametrize("order", ["pretrainlab_first", "transformers_first"])
def test_import_pretrainlab_registers_the_model_type(memorised, exported, tmp_path, order):
    batch = model_batch()
    torch.save(batch, tmp_path / "batch.pt")
    result = run_child(IMPORT_PRETRAINLAB_CHILD, tmp_path, str(exported), str(tmp_path), order)
    assert result["config_class"] == "pretrainlab.models.glm_hub.configuration_glm.GLMConfig"
    assert result["model_class"] == "pretrainlab.models.glm_hub.modeling_glm.GLMForBlankInfilling"
    assert not (tmp_path / "modules").exists() or not any((tmp_path / "modules").rglob("*.py"))
    if order == "pretrainlab_first":  # registration is lazy: no torch, no transformers yet
        assert result["light"]
    with torch.no_grad():
        expected_logits = memorised(**batch).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected_logits, rtol=0, atol=1e-6)


def test_pretrainlab_never_passes_trust_remote_code():
    offenders = []
    for path in sorted((SRC / "pretrainlab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for kw in getattr(node, "keywords", []) if isinstance(node, ast.Call) else []:
                if kw.arg == "trust_remote_code" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value in (False, None)
                ):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


# ----------------------------------------------------------------------------- one meaning, two copies


def test_standalone_constants_match_the_collator():
    from pretrainlab.models.glm_hub import modeling_glm

    assert modeling_glm.IGNORE_INDEX == blank_infilling.IGNORE_INDEX
    for name in ("MASK_TOKEN", "GMASK_TOKEN", "SOP_TOKEN", "EOP_TOKEN"):
        assert getattr(modeling_glm, name) == getattr(blank_infilling, name), name


@pytest.mark.parametrize(("n_a", "n"), [(1, 1), (3, 3), (3, 9), (7, 8)])
def test_standalone_decoding_mask_is_the_collators(n_a, n):
    from pretrainlab.models.glm_hub import modeling_glm

    one, lengths = torch.tensor([n_a]), torch.tensor([n])
    expected = blank_infilling.build_glm_attention_mask(one, lengths, n)  # (1, n, n)
    assert torch.equal(modeling_glm.glm_visibility(n_a, n), expected)


def test_both_decoders_share_the_contrastive_rules():
    """One definition (in the standalone module, which may import nothing of pretrainlab)
    serves the ``generate`` path and the GLM loop."""
    from pretrainlab.models.glm_hub import modeling_glm

    assert contrastive.degeneration_penalty is modeling_glm.degeneration_penalty
    assert contrastive.is_contrastive is modeling_glm.is_contrastive
    configs = [
        GenerationConfig(penalty_alpha=0.6, top_k=4),
        GenerationConfig(penalty_alpha=0.6, top_k=4, do_sample=True),
        GenerationConfig(penalty_alpha=0.0, top_k=4),
        GenerationConfig(),
    ]
    assert [modeling_glm.is_contrastive(c) for c in configs] == [True, False, False, False]
