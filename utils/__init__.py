"""The course library: data, training, LR search, plots, Grad-CAM, summary, training doctor.

Import the submodules you need (``from utils.data import load_cifar10``); importing has no side effects.
"""
