"""Firearm-type classification with self-supervised pre-training (the SSL seed, ``000_…``).

Owns: labelled image folders and their stratified splits (``data``), SimCLR / DINO / mixed DINO + supervised /
supervised pre-training with lightly's losses, heads and transforms and a k-NN monitor (``pretrain``), the
downstream protocols — linear probe and full fine-tuning — with accuracy, per-class precision/recall, a
confusion matrix, temperature calibration and the confidence cut points of the served head (``downstream``), the
one-command comparison of every method and backbone plus the frozen CLIP of this project (``compare``), and the
``dangerclip types`` command (``cli``). Imports ``dangerclip`` (the type backbones and head export, the CLIP
backbone, shared helpers), torch, torchvision, lightly and scikit-learn; never ``service``.
"""
