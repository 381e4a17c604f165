"""Model architectures: plain ``nn.Module``s with paper presets; no Lightning, no data code.

Every preset is importable flat (``audiosep.models.conv_tasnet_base()``, as torchaudio does) and
by name through the registry (``list_models()``, ``build(name, **overrides)``).
"""

from audiosep.models.conv_tasnet import ConvTasNet, conv_tasnet_base, conv_tasnet_demo
from audiosep.models.quartznet import QuartzNet, quartznet_5x5, quartznet_15x5
from audiosep.models.registry import MODEL_CLASSES, PRESETS, build, list_models, model_class
from audiosep.models.resepformer import RESepFormer, resepformer_base
from audiosep.models.sepformer import SepFormer, sepformer_base
from audiosep.models.tiny_sepformer import TinySepformer, tiny_sepformer_base

__all__ = [
    "MODEL_CLASSES", "PRESETS", "ConvTasNet", "QuartzNet", "RESepFormer", "SepFormer", "TinySepformer",
    "build", "conv_tasnet_base", "conv_tasnet_demo", "list_models", "model_class", "quartznet_5x5",
    "quartznet_15x5", "resepformer_base", "sepformer_base", "tiny_sepformer_base",
]
