"""One clear error for a tensor that is not a batch of RGB images (shared by every model)."""
import torch


def check_image_batch(x: torch.Tensor, model_name: str, size: int | None = None) -> None:
    """Raise ValueError naming the expected shape unless ``x`` is (B, 3, H, W) (H = W = ``size`` if given)."""
    hw = f"{size}, {size}" if size else "H, W"
    ok = x.dim() == 4 and x.shape[1] == 3 and (size is None or tuple(x.shape[2:]) == (size, size))
    if not ok:
        raise ValueError(f"{model_name} expects a batch of images shaped (B, 3, {hw}); got {tuple(x.shape)}")
