"""Name -> constructor tables: the only place a model part is chosen (no if-chains elsewhere).

A new part registers here and adds its name to the matching tuple in models/config.py, which
validates names without importing any model; the check below keeps the two in step.
"""

from __future__ import annotations

from models import config
from models.backbone import GPT, MLPBackbone, ToyTransformer, Transformer
from models.heads import RegressionHead
from models.inputs import PatchInput
from models.routed import RoutedBackbone
from models.tokens import ClassifierHead, OneHotInput, TokenInput

INPUT_LAYERS = {"patch": PatchInput, "tokens": TokenInput, "onehot": OneHotInput}
BACKBONES = {"transformer": Transformer, "toy": ToyTransformer, "gpt": GPT, "mlp": MLPBackbone,
             "routed": RoutedBackbone}
HEADS = {"regression": RegressionHead, "classifier": ClassifierHead}

for _table, _names in ((INPUT_LAYERS, config.INPUT_LAYERS), (BACKBONES, config.BACKBONES),
                       (HEADS, config.HEADS)):
    if tuple(_table) != _names:  # not an assert: it must hold under python -O too
        raise ImportError(f"models.registry {tuple(_table)} != models.config {_names}")
if tuple(n for n, c in BACKBONES.items() if getattr(c, "SOWS_GATES", False)) != \
        config.GATED_BACKBONES:
    raise ImportError(f"models.config.GATED_BACKBONES {config.GATED_BACKBONES} are not the "
                      "backbones with SOWS_GATES")
