"""Inference code of the CIFAR-10 lab: images, Grad-CAM, attention."""
