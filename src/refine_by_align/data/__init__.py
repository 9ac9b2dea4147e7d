"""Training-pair construction and benchmark building (Sec. 3.4, App. A.2, A.11).

Modules (import them directly; nothing heavy is imported here):

* :mod:`.masks`       free-form artifact-mask generator G, erode / dilate
* :mod:`.perturb`     colour perturbation S, geometric transform T with forward correspondence
* :mod:`.synthetic`   procedural objects (a stand-in for object photos with masks)
* :mod:`.readers`     multi-view photo folders and flat image+mask folders
* :mod:`.pairs`       TrainingPair builders, PairDataset, show_pairs
* :mod:`.make_cases`  evaluation-case builder with pluggable artifact simulators
"""
