"""Name -> constructor tables: the only place a model part is chosen (no if-chains elsewhere).

A new part registers here; ``ModelConfig`` validates names against these tables.
"""

from __future__ import annotations

from models.backbone import Transformer
from models.heads import RegressionHead
from models.inputs import PatchInput

INPUT_LAYERS = {"patch": PatchInput}
BACKBONES = {"transformer": Transformer}
HEADS = {"regression": RegressionHead}
