"""The property registry: what the harness knows about each robustness property, in one place.

The pytest markers, the report's section order, titles, headline metrics and views, the ``--data``
name check and the metric contract test all read ``PROPERTIES``. Adding a property is: its test module
(``robustness_tests/test_<name>.py`` with ``pytestmark = pytest.mark.<name>``), one entry here, and its
metrics in ``clip_robustness.plugins.metrics.METRICS`` (docs/architecture.md, "Adding a property").
Import-light on purpose: the plugin reads it at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Property:
    name: str  # the marker (`-m NAME`) and the report rows' "property"
    title: str  # the report section's heading
    description: str  # the marker's help text (`pytest --markers`)
    headline: tuple[str, ...]  # the metric a summary cell shows: the first one the property recorded
    # condition values a summary prefers when a cell was measured several ways (e.g. {"score": "mcm"})
    preferred: dict[str, str] = field(default_factory=dict)
    data: tuple[str, ...] = ()  # the --data names (or "PREFIX:" families) the property's tests read
    view: str = ""  # the report view that draws its figures (clip_robustness.plugins.html views); "" = table only


PROPERTY_LIST = (
    Property("accuracy", "Zero-shot accuracy", "zero-shot top-1, clean and under natural shift", ("top1",),
             data=("imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "imagefolder:"),
             view="accuracy"),
    Property("factor", "Visual-factor invariance", "visual-factor invariance (exact interventions, ImageNet-X)",
             ("top1", "consistency"), data=("imagenet", "imagenet-x"), view="factor"),
    Property("shape_bias", "Shape bias", "shape vs texture decisions on cue-conflict images", ("shape_bias",),
             data=("cue-conflict",), view="shape_bias"),
    Property("calibration", "Calibration", "ECE / NLL / Brier before and after temperature scaling", ("ece",),
             preferred={"scaling": "none"},
             data=("imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "imagefolder:"),
             view="calibration"),
    Property("ood", "OOD detection", "OOD detection: MCM, MSP, energy, max-logit; AUROC, FPR95, AUPR", ("auroc",),
             preferred={"score": "mcm"}, data=("imagenet", "ood:", "imagefolder:"), view="ood"),
    Property("retrieval", "Image–text retrieval", "image-text retrieval under image corruption and caption "
             "perturbation", ("i2t_r1", "t2i_r1"), data=("coco", "flickr30k"), view="retrieval"),
    Property("corruption2d", "2D corruptions", "ImageNet-C style corruptions x 5 severities",
             ("top1", "relative_top1"), data=("imagenet", "imagenet-c", "imagefolder:"), view="corruption"),
    Property("corruption3d", "3D corruptions", "depth-aware 3D corruptions x 5 severities",
             ("top1", "relative_top1"), data=("imagenet", "imagenet-3dcc", "imagenet-depth"), view="corruption"),
    Property("multiview", "3D awareness (multi-view)", "3D awareness: dense correspondence across views, "
             "multi-view consistency", ("correspondence_recall", "consistency"), view="multiview"),
    Property("lmm", "LMM interaction", "LMM built on the CLIP tower vs the CLIP alone", ("lmm_gain",),
             preferred={"scoring": "loglik"}, data=("imagenet-d",), view="lmm"),
)
PROPERTIES: dict[str, Property] = {p.name: p for p in PROPERTY_LIST}
