"""The study of the paper's claims: every contestant (DETR, DETR+, Faster R-CNN +
FPN, the four Deformable DETR variants) trained on the shapes benchmark through
tools/lazyconfig_train_net.py, evaluated every epoch, measured and reported
(tools/study.py is its command line)."""

from .plan import CONTESTANTS, QUICK, Contestant, StudySize

__all__ = ["CONTESTANTS", "QUICK", "Contestant", "StudySize"]
