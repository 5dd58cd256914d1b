"""DeepFirearm retrieval: two-stage training (class-weighted classification, then siamese pairs with the
double- or single-margin loss), evaluation (PCA without whitening at several dimensions, trapezoidal mAP, CMC
rank-1..32) and the paper's ablation table in one command (``dangerclip retrieval``). Imports
``dangerclip.modeling.retrieval``, ``training.firearms`` for the split, torch and numpy.
"""
