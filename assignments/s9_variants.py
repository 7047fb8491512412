"""The measured effect of the Ultimus variants, for the S9 notebook and the README.

Source: results/README.md (CIFAR-10 JPEG copy, one NVIDIA H200, bf16, GPU-resident data with
crop + flip + cutout, Adam + one-cycle, batch 128, 24 epochs, one run each; those runs used a
mis-computed normalisation mean, so read them as +-1 point).
"""

SOURCE = ("results/README.md: CIFAR-10 (JPEG copy), one NVIDIA H200, 24 epochs, Adam + one-cycle, "
          "batch 128, one run each (+-1 point)")

MEASURED = [
    # (variant, command flag, max LR, test accuracy %)
    ("original solution: batch-mixing attention, Adam wd 1e-2, max LR 0.83 (3 epochs)", "-", "0.83", "10.00 (collapsed, loss 2.3026)"),
    ("the original batch-mixing block with a sane LR", "-", "1.1e-3", "34.9 (best 40.6)"),
    ("spec: per-image attention, softmax then /sqrt 8", "--variant spec", "2.5e-3", "58.5"),
    ("spec + residual around each block", "--variant residual", "1e-2", "70.7"),
    ("pre-scaled: softmax(QtK / sqrt 8)", "--variant prescaled", "range test", "60.4"),
    ("pre-scaled + residual", "--variant prescaled-residual", "range test", "71.1"),
]


def variants_markdown() -> str:
    """The table as markdown (``IPython.display.Markdown(variants_markdown())`` in a notebook)."""
    lines = ["| variant | option | max LR | test accuracy (%) |", "|---|---|---|---|"]
    lines += [f"| {v} | `{o}` | {lr} | {acc} |" for v, o, lr, acc in MEASURED]
    return "\n".join(lines) + f"\n\nSource: {SOURCE}."
