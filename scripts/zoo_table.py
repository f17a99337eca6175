"""Print the docs/zoo.md and README zoo tables from clip_robustness.fixtures/zoo/zoo.json (the measured numbers).

    .venv/bin/python scripts/zoo_table.py [--readme | --demonstrations]

The tables list the factor models; ``--demonstrations`` prints docs/zoo.md's table of the
demonstration models next to the model each started from.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clip_robustness.fixtures import zoo  # noqa: E402

VARIES = {"rn-clip": "ResNet, diverse data, CLIP loss", "vit-clip": "ViT tower",
          "rn-clip-narrow": "narrow training distribution", "rn-clip-small": "10% of the training images",
          "rn-siglip": "SigLIP (sigmoid) loss", "rn-clip-ft": "fine-tuned on labels (linear head)"}


def f3(x) -> str:
    return "" if x is None else f"{x:.3f}"


def demonstrations() -> None:
    print("| model | from | test top-1 (openai / single) | shape bias | shape bias of `from` | style | "
          "OOD AUROC near / far (MSP) |")
    print("|---|---|---|---|---|---|---|")
    for e in zoo.list_models():
        if e.demonstration:
            r, base = e.recorded, e.metadata["init_from"]  # None: trained from scratch
            base_bias = f3(zoo.get(base).recorded["shape_bias"]) if base else ""
            print(f"| `{e.name}` | {f'`{base}`' if base else 'scratch'} | {f3(r['test_top1'])} / "
                  f"{f3(r['test_top1_single']) or '-'} | {f3(r['shape_bias'])} | {base_bias} | "
                  f"{f3(r['shift_style_top1'])} | {f3(r['ood_auroc_msp_heldout'])} / {f3(r['ood_auroc_msp_far_ood'])} |")


def main() -> None:
    entries = zoo.factor_models()
    if "--demonstrations" in sys.argv:
        demonstrations()
        return
    if "--readme" in sys.argv:
        print("| model | varies | test top-1 | style shift | shape bias | OOD AUROC near / far (MSP) |")
        print("|---|---|---|---|---|---|")
        for e in entries:
            r = e.recorded
            name = f"`embedded:{e.name}`" + (" (default)" if e.default else "")
            print(f"| {name} | {VARIES.get(e.name, '')} | {f3(r['test_top1'])} | {f3(r['shift_style_top1'])} | "
                  f"{f3(r['shape_bias'])} | {f3(r['ood_auroc_msp_heldout'])} / {f3(r['ood_auroc_msp_far_ood'])} |")
        return
    print("| model | tower | data | train images | loss | fine-tune | steps | train s | MB | test top1 | style | "
          "background | lighting | pose | shape bias | OOD AUROC (MSP) near | far |")
    print("|" + "---|" * 17)
    for e in entries:
        m, r = e.metadata, e.recorded
        ft = "labels (linear head)" if m["finetune"] == "labels" else m["finetune"]
        name = f"`{e.name}`" + (" (default)" if e.default else "")
        print(f"| {name} | {m['architecture']} | {m['train_distribution']} | {m['train_size']} | {m['loss']} | {ft} | "
              f"{m['recipe']['steps']} | {m['train_seconds']:.0f} | {m['size_mb']:.2f} | {f3(r['test_top1'])} | "
              f"{f3(r['shift_style_top1'])} | {f3(r['shift_background_top1'])} | {f3(r['shift_lighting_top1'])} | "
              f"{f3(r['shift_pose_top1'])} | {f3(r['shape_bias'])} | {f3(r['ood_auroc_msp_heldout'])} | "
              f"{f3(r['ood_auroc_msp_far_ood'])} |")


if __name__ == "__main__":
    main()
