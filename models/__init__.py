"""The course's models: ResNet18 (S7), CustomResNet (S8), TransformerUltimus (S9), ViT (S10)."""
from .model7 import ResNet18
from .model8 import CustomResNet
from .model9 import TransformerUltimus
from .model10 import ViT
from .transformer_ultimus import UltimusBlock

__all__ = ["ResNet18", "CustomResNet", "TransformerUltimus", "ViT", "UltimusBlock"]
