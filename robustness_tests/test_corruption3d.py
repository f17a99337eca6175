"""3D corruption tolerance: zero-shot top-1 under depth-aware corruptions (3D Common Corruptions).

Families (``clip_robustness.fixtures.corruptions3d``): near focus, far focus, fog 3D, flash, xy- and z-motion blur
computed from the world's depth maps, plus low light, ISO noise, colour quantisation and
compression; 5 severities each. Rows as in the 2D property: ``top1`` per (corruption, severity),
``relative_top1`` to clean, the clean row and the means (``corruption=mean``). The study's
question -- does the ResNet tower hold up better than the ViT tower, above all at high severity
-- is read from these rows across models (the report groups models by their ``architecture``).

Run size: the world test split's first 50 images per cell (10 families x 5 severities = 2,500
corrupted images per model; depth maps are re-rendered from the scene specs); ``--limit N`` sets
the number of images per cell. Real data: ``--data imagenet-3dcc=PATH`` (ImageNet-3DCC's
published ``<corruption>/<severity>/<wnid>/`` layout), or depth-aware corruption of your own
images: ``--data imagenet=PATH --data imagenet-depth=DEPTH`` where DEPTH mirrors the image
folders with one ``<stem>.npy`` (metres) or 16-bit ``<stem>.png`` (1/512 m) per image.
"""
from __future__ import annotations

import pytest

from clip_robustness.fixtures.corruption_cells import (Cell, corruption3d_condition, corruption_folder_cells,
                                                      folder_depth_source, record_corruption_grid, world_depth_source)
from clip_robustness.fixtures.corruptions2d import SEVERITIES
from clip_robustness.fixtures.corruptions3d import FAMILIES_3D
from clip_robustness.fixtures.embed import head_choices
from clip_robustness.fixtures.real_data import load_real_set, parametrize_real_sets
from clip_robustness.fixtures.world import FOV_DEG

pytestmark = pytest.mark.corruption3d

DEFAULT_IMAGES = 50
# ImageNet-3DCC's published families (its video-codec and bit-error families included)
PUBLISHED_3DCC = tuple(f for f in FAMILIES_3D if f != "compression") + ("h265_crf", "h265_abr", "bit_error")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_real_sets(metafunc, "real_set", ("imagenet-3dcc", "imagenet-depth"))


def test_corruption3d_world(clip, world, cache, record, rb_config):
    clean = world("test").head(DEFAULT_IMAGES if rb_config.limit is None else None)
    depth = world_depth_source(clean)
    cells = [Cell(f, s, clean, corruption3d_condition(f, s, depth, depth_key="world", fov_deg=FOV_DEG))
             for f in FAMILIES_3D for s in SEVERITIES]
    head, templates = head_choices(clip, clean, rb_config.templates)[0]
    record_corruption_grid(clip, clean, cells, cache, record, head=head, templates=templates, dataset_name=clean.name,
                           families=FAMILIES_3D)


def test_corruption3d_real(clip, cache, record, rb_config, real_set):
    clean = None
    if "imagenet" in rb_config.data:
        clean = load_real_set("imagenet", rb_config)
    families = PUBLISHED_3DCC if real_set == "imagenet-3dcc" else FAMILIES_3D
    if real_set == "imagenet-3dcc":
        cells = corruption_folder_cells(real_set, rb_config.data[real_set], families, rb_config.limit)
        dataset_name = real_set
    else:
        if clean is None:
            pytest.fail("--data imagenet-depth=... holds depth maps for the images of --data imagenet=PATH; "
                        "give both", pytrace=False)
        depth, digest = folder_depth_source(clean, rb_config.data[real_set])
        cells = [Cell(f, s, clean, corruption3d_condition(f, s, depth, depth_key=digest))
                 for f in families for s in SEVERITIES]
        dataset_name = clean.name
    head, templates = head_choices(clip, cells[0].dataset, rb_config.templates)[0]
    record_corruption_grid(clip, clean, cells, cache, record, head=head, templates=templates,
                           dataset_name=dataset_name, families=families)

