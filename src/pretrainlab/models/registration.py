"""Register the GLM model type with transformers' Auto classes on ``import pretrainlab``, lazily.

A prefix run's ``hf/`` holds ``model_type: pretrainlab_glm`` and an ``auto_map`` to the code saved
beside it. With pretrainlab imported, ``AutoConfig`` / ``AutoModel.from_pretrained(folder)`` should
use pretrainlab's own classes, with no ``trust_remote_code``: transformers does so once the model
type is registered (local code wins when ``trust_remote_code`` is not given).

Registering needs the classes, i.e. torch and transformers (seconds to import), while ``import
pretrainlab`` costs ~0.3 s and must stay that way (the config schemas, the sweeper plugin and the
command lines that only read run folders import it). So nothing is imported here: a finder on
``sys.meta_path`` waits for transformers' own ``configuration_auto`` / ``modeling_auto`` modules
and calls ``sync`` right after either has run, i.e. before anyone can call ``AutoConfig`` /
``AutoModel``. It also watches our own ``glm_hub`` modules, so that an import which had to leave
registration to later (it was half-way through one of them) completes it when it ends. If
transformers is already imported, registration happens at once; importing
``pretrainlab.models.glm`` registers both classes as well.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import importlib.machinery
    import types

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"
HUB_CONFIG = "pretrainlab.models.glm_hub.configuration_glm"
HUB_MODELING = "pretrainlab.models.glm_hub.modeling_glm"
GLM_MODULE = "pretrainlab.models.glm"  # registers config and model at its end
# After any of these has run, register what can be: transformers' Auto classes now exist, or our
# classes do (so an import that had to skip registration half-way is made good when it ends).
WATCHED = (CONFIG_AUTO, MODELING_AUTO, HUB_CONFIG, HUB_MODELING)


def sync(done: str | None = None) -> None:
    """Register the GLM with whichever Auto classes exist; idempotent, imports no more than needed.

    With ``modeling_auto`` loaded, importing ``pretrainlab.models.glm`` registers config and model.
    With only ``configuration_auto``, the configuration is registered alone: its module needs
    nothing but ``transformers.configuration_utils`` (``configuration_auto`` is first imported
    half-way through ``transformers.modeling_utils``, when model code cannot be imported yet).
    While one of our modules is being imported (``done``: the one that has just run), nothing
    happens: the end of that import calls this again (or ``pretrainlab.models.glm`` registers).
    """
    if any(name != done and _initializing(name) for name in (GLM_MODULE, HUB_CONFIG, HUB_MODELING)):
        return
    if _loaded(MODELING_AUTO, done):
        __import__(GLM_MODULE)
    elif _loaded(CONFIG_AUTO, done):
        from transformers import AutoConfig

        from pretrainlab.models.glm_hub.configuration_glm import MODEL_TYPE, GLMConfig

        AutoConfig.register(MODEL_TYPE, GLMConfig, exist_ok=True)


def install() -> None:
    """Arrange for the GLM to be registered as soon as transformers' Auto classes exist.

    Idempotent. Costs nothing at import: it adds a finder to ``sys.meta_path`` that only watches
    ``WATCHED`` (and registers now if transformers' auto modules are already loaded).
    """
    if any(_loaded(name, None) for name in (CONFIG_AUTO, MODELING_AUTO)):
        _safely(sync)
    pending = [name for name in WATCHED if name not in sys.modules]
    if pending and not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport(pending))


def _loaded(name: str, done: str | None) -> bool:
    """Whether module ``name`` has run to its end (``done``: it just has, its import is closing)."""
    return name in sys.modules and (name == done or not _initializing(name))


def _initializing(name: str) -> bool:
    """Whether module ``name`` is being imported right now (in sys.modules, not finished)."""
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _safely(register: Callable[[], None]) -> None:
    """Run a registration; a failure must never break the import of transformers that triggered it."""
    try:
        register()
    except Exception as err:  # noqa: BLE001 - reported, and `import pretrainlab.models.glm` still works
        warnings.warn(
            "pretrainlab: could not register the GLM model type with transformers' Auto classes "
            f"({type(err).__name__}: {err}); `import pretrainlab.models.glm` registers it.",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of a watched module so that ``sync`` runs after it."""

    def __init__(self, pending: list[str]) -> None:
        self.pending = set(pending)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        """The real spec of a watched module (from the finders after this one), its loader wrapped."""
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)  # all seen: nothing left to watch
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader, lambda: sync(done=fullname))
                return spec
        return None


class _RegisteringLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the registration once the module has executed."""

    def __init__(self, loader: Any, register: Callable[[], None]) -> None:
        self.loader = loader
        self.register = register

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        """The real loader's module (None: the default one)."""
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        """Run the module with the real loader (restored on it), then register."""
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _safely(self.register)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
