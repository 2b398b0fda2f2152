"""What a pipeline run's champion's out-of-distribution check really costs in-domain, and what it refers.

A run's report split is small (the smoke profile's test split holds 4 images), too small to show a referral rate of
1%. This renders ``--fresh`` new in-distribution images with the run's own synthetic generator (its seed and size
from the raw folder's ``.synthetic.json``, another seed for the images, JPEG and resized as the ETL does) and the
synthetic stand-ins of the evaluation (``--stand-in-seed``, 1 as in 30_evaluate), then reports per detector the
AUROC of each stand-in set against the fresh images, the share of each set the check refers, and the share of the
fresh in-distribution images it refers (its in-domain cost). Nothing here changes the check: it only measures it.

    python benchmarks/ood_calibration.py /tmp/ws --run-id smoke-1 --fresh 400 --markdown
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path, help="the LEUKOLAB_WORKSPACE of a pipeline run on synthetic data")
    parser.add_argument("--run-id", default="smoke-1")
    parser.add_argument("--fresh", type=int, default=400, help="new in-distribution images (default 400)")
    parser.add_argument("--fresh-seed", type=int, default=2007, help="their seed, apart from the dataset's")
    parser.add_argument("--stand-ins", type=int, default=20, help="images per stand-in set (default 20)")
    parser.add_argument("--stand-in-seed", type=int, default=1, help="the stand-ins' seed (30_evaluate's: 1)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    os.environ["LEUKOLAB_WORKSPACE"] = str(args.workspace)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from sklearn.metrics import roc_auc_score

    from leukolab.data.reading.dataset import load_manifest
    from leukolab.data.synthetic.shift import SHIFTS, shifted_images
    from leukolab.predictor.uri import load_smear_model

    evaluation = json.loads((args.workspace / "runs" / args.run_id / "evaluate.json").read_text())
    model = load_smear_model(evaluation["champion"]["model_uri"])
    raw_dir = Path(load_manifest(evaluation["dataset_dir"])["raw_dir"])
    home = model.ood.scores(model.ood_inputs(fresh_images(model, raw_dir, args.fresh, args.fresh_seed)))
    rows = []
    for kind in SHIFTS:
        away = model.ood.scores(model.ood_inputs(list(shifted_images(kind, args.stand_ins, model.meta.image_size,
                                                                      args.stand_in_seed))))
        row = {"set": kind, "referred": float(model.ood.out_of_distribution(away["combined"]).mean())}
        for name, scores in away.items():
            truth = np.r_[np.zeros(len(home[name])), np.ones(len(scores))]
            row[name] = float(roc_auc_score(truth, np.r_[home[name], scores]))
        rows.append(row)
    cost = float(model.ood.out_of_distribution(home["combined"]).mean())
    report(rows, cost, model.ood.summary(), args)


def fresh_images(model, raw_dir: Path, count: int, seed: int) -> list[np.ndarray]:
    """``count`` new smears from the generator that wrote ``raw_dir`` (the classes in turn), as the ETL stores them."""
    from leukolab import CLASS_NAMES
    from leukolab.data.synthetic.smears import image_rng, render_smear
    from leukolab.images import decode_image

    settings = json.loads((raw_dir / ".synthetic.json").read_text())
    if set(settings) - {"seed", "image_size", "segmentation", "failed_segmentation"}:
        raise ValueError(f"{raw_dir} was generated with options this script does not reproduce: {settings}")
    arrays = []
    for i in range(count):
        name = CLASS_NAMES[i % len(CLASS_NAMES)]
        image, _ = render_smear(image_rng(seed, name, i), name, settings["image_size"])
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)  # as generate_dataset writes it
        arrays.append(model.prepare(decode_image(buffer.getvalue())))
    return arrays


def report(rows: list[dict], cost: float, check: dict, args) -> None:
    names = [name for name in rows[0] if name not in ("set", "referred")]
    print(f"threshold {check['threshold']:.3f} on {check['calibration_images']} calibration images "
          f"(kept share {check['kept_share']:.3f}); {args.fresh} new in-distribution images: "
          f"{cost:.1%} referred as out of distribution")
    if args.markdown:
        print("| set | referred | " + " | ".join(f"AUROC {name}" for name in names) + " |")
        print("|---|---|" + "---|" * len(names))
    for row in rows:
        if args.markdown:
            print(f"| {row['set']} | {row['referred']:.0%} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
        else:
            print(f"{row['set']:14s} referred {row['referred']:.0%}  " + "  ".join(f"{n} {row[n]:.3f}" for n in names))


if __name__ == "__main__":
    main()
