"""The property registry: what the harness knows about each robustness property, in one place.

The pytest markers, the report's section order, titles, headline metrics and views, the ``--data``
name check and the metric contract test all read ``PROPERTIES``. Adding a property is: its test module
(``robustness_tests/test_<name>.py`` with ``pytestmark = pytest.mark.<name>``), one entry here, and its
metrics in ``clip_robustness.plugins.metrics.METRICS``; outside this repository, :func:`register` from the
project's conftest.py does the last two (docs/architecture.md, "Adding a property").
Import-light on purpose: the plugin reads it at start-up.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Property:
    name: str  # the marker (`-m NAME`) and the report rows' "property"
    title: str  # the report section's heading
    description: str  # the marker's help text (`pytest --markers`)
    headline: tuple[str, ...]  # the metric a summary cell shows: the first one the property recorded
    # condition values a summary prefers when a cell was measured several ways (e.g. {"score": "mcm"})
    preferred: dict[str, str] = field(default_factory=dict)
    data: tuple[str, ...] = ()  # the --data names (or "PREFIX:" families) the property's tests read
    # the plot function that draws its report figures, "module:function" (clip_robustness.plugins.html); "" = table only
    view: str = ""
    group_by: str = "dataset"  # the condition key (or "dataset") that groups the report table


PROPERTY_LIST = (
    Property("accuracy", "Zero-shot accuracy", "zero-shot top-1, clean and under natural shift", ("top1",),
             data=("imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "imagefolder:"),
             view="clip_robustness.plugins.html.accuracy:accuracy_plots"),
    Property("factor", "Visual-factor invariance", "visual-factor invariance (exact interventions, ImageNet-X)",
             ("top1", "consistency"), data=("imagenet", "imagenet-x"),
             view="clip_robustness.plugins.html.factor:factor_plots", group_by="factor"),
    Property("shape_bias", "Shape bias", "shape vs texture decisions on cue-conflict images", ("shape_bias",),
             data=("cue-conflict",), view="clip_robustness.plugins.html.shape_bias:shape_bias_plots"),
    Property("calibration", "Calibration", "ECE / NLL / Brier before and after temperature scaling", ("ece",),
             preferred={"scaling": "none"},
             data=("imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "imagefolder:"),
             view="clip_robustness.plugins.html.calibration:calibration_plots"),
    Property("ood", "OOD detection", "OOD detection: MCM, MSP, energy, max-logit; AUROC, FPR95, AUPR", ("auroc",),
             preferred={"score": "mcm"}, data=("imagenet", "ood:", "imagefolder:"),
             view="clip_robustness.plugins.html.ood:ood_plots", group_by="score"),
    Property("retrieval", "Image–text retrieval", "image-text retrieval under image corruption and caption "
             "perturbation", ("i2t_r1", "t2i_r1"), data=("coco", "flickr30k"),
             view="clip_robustness.plugins.html.retrieval:retrieval_plots"),
    Property("corruption2d", "2D corruptions", "ImageNet-C style corruptions x 5 severities",
             ("top1", "relative_top1"), data=("imagenet", "imagenet-c", "imagefolder:"),
             view="clip_robustness.plugins.html.corruption:corruption_plots", group_by="corruption"),
    Property("corruption3d", "3D corruptions", "depth-aware 3D corruptions x 5 severities",
             ("top1", "relative_top1"), data=("imagenet", "imagenet-3dcc", "imagenet-depth"),
             view="clip_robustness.plugins.html.corruption:corruption_plots", group_by="corruption"),
    Property("multiview", "3D awareness (multi-view)", "3D awareness: dense correspondence across views, "
             "multi-view consistency", ("correspondence_gain", "correspondence_recall", "consistency"),
             # the headline cell: views 90-120 degrees apart, where a same-position guess is at chance, so a
             # tower without 3D awareness (position-only or shuffled features) scores about zero there
             preferred={"angle": "90-120", "threshold": "8px"}, view=""),
    Property("lmm", "LMM interaction", "LMM built on the CLIP tower vs the CLIP alone", ("lmm_gain",),
             preferred={"scoring": "loglik"}, data=("imagenet-d",), view="clip_robustness.plugins.html.lmm:lmm_plots"),
)
PROPERTIES: dict[str, Property] = {p.name: p for p in PROPERTY_LIST}


def register(prop: Property, *, metrics: Iterable[Any] = ()) -> None:
    """Add a property (and the report metrics it records, ``clip_robustness.plugins.metrics.MetricInfo``
    entries) defined outside this repository. Call it at import time of the rootdir's conftest.py (or of a
    plugin): pytest imports those before the run starts, when the markers are declared from this registry.

    Registering an equal entry again is a no-op (a conftest imported twice); another property under a
    taken name is refused, as is a headline metric that is not registered."""
    if not isinstance(prop, Property):
        raise TypeError(f"register() takes a Property, got {type(prop).__name__}")
    from clip_robustness.plugins.metrics import METRICS, register_metric

    known = PROPERTIES.get(prop.name)  # checked first, so a refused property registers none of its metrics
    if known is not None and known != prop:
        raise ValueError(f"property {prop.name!r} is already registered with another definition; "
                         "pick another name for yours")
    for info in metrics:
        register_metric(info)
    unknown = [m for m in prop.headline if m not in METRICS]
    if unknown:
        raise ValueError(f"property {prop.name!r}: headline metric(s) {unknown} are not registered; pass their "
                         "MetricInfo entries as register(..., metrics=[...])")
    PROPERTIES[prop.name] = prop


def property_of(item: Any) -> str | None:
    """The property a pytest item measures: the first of its markers that names a registered property."""
    return next((mark.name for mark in item.iter_markers() if mark.name in PROPERTIES), None)


def data_properties(name: str) -> tuple[str, ...]:
    """The properties that read the ``--data`` name ``name`` (or its ``PREFIX:`` family), from their ``data``."""
    return tuple(p.name for p in PROPERTIES.values()
                 if name in p.data or any(d.endswith(":") and name.startswith(d) for d in p.data))


def collected_properties(session: Any) -> bool:
    """Whether this run runs the robustness suite: a test carrying a property marker was collected (and
    not deselected). Only then is a report written, even one that measured nothing; never when pytest only
    lists tests or fixtures (--collect-only, --fixtures, --fixtures-per-test)."""
    option = session.config.option
    if option.collectonly or getattr(option, "showfixtures", False) or getattr(option, "show_fixtures_per_test", False):
        return False
    return any(property_of(item) for item in session.items)
