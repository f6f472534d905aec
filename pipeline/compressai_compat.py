"""Loading CompressAI without the parts that need torchvision or torch-geometric.

``import compressai`` runs ``compressai/__init__.py``, which imports its dataset and
transform registries; those import ``torchvision`` and ``torch_geometric`` (point-cloud
transforms). Neither is needed to run image models and there is no CPU torchvision
wheel here. pixarc uses only ``compressai.models``, ``compressai.entropy_models``,
``compressai.layers``, ``compressai.ans`` (the C++ rANS coder), ``compressai._CXX`` and
``compressai.zoo.image`` (checkpoint URLs). This module registers the ``compressai``
package and its ``registry`` sub-package without executing their ``__init__`` files
(the model registry it needs is ``compressai/registry/torch.py``, which has no such
imports), then imports those modules normally. ``tests/test_compressai_compat.py``
checks that none of torchvision / torch_geometric gets imported and that a model
compresses and decompresses through the real rANS coder.

When torchvision and torch_geometric are both installed, the normal import is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def available() -> bool:
    return importlib.util.find_spec("compressai") is not None


def load() -> types.ModuleType:
    """The ``compressai`` package with ``models``, ``entropy_models``, ``layers``, ``ans`` loaded."""
    if "compressai.models" in sys.modules:
        return sys.modules["compressai"]
    spec = importlib.util.find_spec("compressai")
    if spec is None:
        raise ImportError("compressai is not installed (make setup installs it with --no-deps)")
    if all(importlib.util.find_spec(m) is not None for m in ("torchvision", "torch_geometric")):
        import compressai  # the full package works in this environment

        importlib.import_module("compressai.models")
        return compressai
    pkg = types.ModuleType("compressai")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.get_entropy_coder = lambda: "ans"  # what compressai/__init__.py defines and the models use
    pkg.available_entropy_coders = lambda: ["ans"]
    sys.modules["compressai"] = pkg
    rspec = importlib.util.find_spec("compressai.registry")
    registry = types.ModuleType("compressai.registry")
    registry.__path__ = list(rspec.submodule_search_locations)
    registry.__spec__ = rspec
    sys.modules["compressai.registry"] = registry
    torch_registry = importlib.import_module("compressai.registry.torch")
    for name in dir(torch_registry):
        if not name.startswith("_"):
            setattr(registry, name, getattr(torch_registry, name))
    registry.TRANSFORMS = {}
    registry.register_transform = lambda name: (lambda cls: cls)
    for sub in ("ans", "entropy_models", "layers", "models"):
        setattr(pkg, sub, importlib.import_module(f"compressai.{sub}"))
    return pkg
