"""Name -> constructor tables: the only place a model part is chosen (no if-chains elsewhere).

A new part registers here; ``ModelConfig`` validates names against these tables.
"""

from __future__ import annotations

from models.backbone import Transformer
from models.gpt import GPT
from models.heads import RegressionHead
from models.inputs import PatchInput
from models.tokens import ClassifierHead, OneHotInput, TokenInput
from models.toy import MLPBackbone, ToyTransformer

INPUT_LAYERS = {"patch": PatchInput, "tokens": TokenInput, "onehot": OneHotInput}
BACKBONES = {"transformer": Transformer, "toy": ToyTransformer, "gpt": GPT, "mlp": MLPBackbone}
HEADS = {"regression": RegressionHead, "classifier": ClassifierHead}
