"""The course library: data, augmentation, training, LR search, precision, checks, metrics, figures,
Grad-CAM, attention measurements, summary, the training doctor, callbacks, TensorBoard and the report.

The main names are importable from here (``from utils import Recipe, fit, gradcam_figure``); each is
loaded on first use, so ``import utils`` stays light and has no side effects.
"""
from importlib import import_module

_EXPORTS = {
    "attention": ["AttentionStats", "attention_stats", "effective_rank", "entropy_per_block", "recording",
                  "row_entropy", "ultimus_blocks"],
    "attention_plots": ["attention_entropy_figure", "attention_maps_figure"],
    "augment": ["AugmentSpec"],
    "callbacks": ["Callback", "EpochLog", "FitState", "History", "Measure", "ProgressBar", "StepRow"],
    "checks": ["batch_independence", "logits_view", "returns_log_probs"],
    "data": ["CLASSES", "CifarData", "DataError", "ImageSplit", "channel_stats", "load_cifar10"],
    "doctor": ["Doctor", "TrainingStopped"],
    "gradcam": ["cam_target", "default_target_layer", "gradcam_figure", "gradcam_maps", "gradcam_maps_and_weights",
                "weight_cosines"],
    "lr": ["LRSearch", "find_lr", "one_cycle"],
    "metrics": ["class_accuracy", "class_accuracy_table", "confusion", "misclassified"],
    "plots": ["augmented_samples", "class_accuracy_figure", "confusion_figure", "curves", "denormalize",
              "lr_figure", "misclassified_figure", "save"],
    "precision": ["Precision", "resolve_precision"],
    "recipe": ["Recipe"],
    "report": ["RunResult", "write_metrics", "write_report"],
    "seed": ["pick_device", "set_seed"],
    "summary": ["count_params", "model_summary", "summary_text"],
    "tensorboard": ["TensorBoard"],
    "train": ["evaluate", "fit", "predict", "train_one_epoch"],
    "transforms": ["make_loaders"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'utils' has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
