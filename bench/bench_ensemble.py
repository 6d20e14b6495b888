"""Ensembles: does the softmax mean of K members beat the best of them, and how often?

Issue 10 asks that ``train lenet5 --data mnist5k --ensemble 3`` beat its best member. One run of that is one
draw: on a 500-image held-out split a member's top-1 moves by 0.2% per image, members of different seeds
differ by several images, and the best of three is the luckiest of three draws. So this script trains
``--members`` N members with the defaults (seeds S, S+1, ...; ``--ensemble`` uses the same consecutive
seeds), scores each on the held-out split, then every K-subset's ensemble (the softmax mean, as ``evaluate``
computes it) against that subset's best member:

- how many subsets' ensembles beat their best member, tie with it, or fall below it, and the mean margin
  in images (ensemble hits - best member's hits);
- the margin against the members' mean, which ensembling is expected to beat;
- the held-out loss (cross-entropy; of an ensemble, of its mean softmax) against the subset's lowest one;
- the ensemble of all N members (the limit of averaging more of them), and how many images k of the N
  members get wrong, for each k: images most members miss no average of them can fix, and a best member
  that misses little else leaves an ensemble nothing to win;
- each member's top-1 and training time, and how many end at ``--target`` or reach it at some epoch
  (issue 10: 97.5% within 20 epochs).

Subsets share members, so the counts are not independent trials; the spread across ``--seed`` values is the
honest error bar. ``python bench/bench_ensemble.py [--model lenet5] [--data mnist5k] [--members 12] [--k 3]
[--seed 0] [--epochs 20] [--target 0.975] [--val-fraction F] [--out results/bench_ensemble]``; writes bench_ensemble.json there
(and the members' runs under it, reused by a second call with the same arguments).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from classicnets_ext.models import list_models  # noqa: E402
from classicnets_ext.train import BUILTIN, DataError, TrainConfig, check_data, train  # noqa: E402
from classicnets_ext.train.evaluate import checkpoint_probs, resolve_checkpoint  # noqa: E402


def member(args, seed: int) -> tuple[torch.Tensor, torch.Tensor, float, list[dict]]:
    """(softmax probabilities on the held-out split, its labels, training seconds, per-epoch metrics) of the
    member ``seed``, trained unless its run folder already holds a final model."""
    split = "" if args.val_fraction is None else f"-v{args.val_fraction:g}"
    out = os.path.join(args.out, f"{args.model}-{args.data}-e{args.epochs}{split}", f"seed-{seed}")
    seconds = float("nan")
    if not os.path.exists(os.path.join(out, "model.pt")):
        start = time.perf_counter()
        # resume: a member whose run was cut short carries on from its last checkpoint (bit-exactly) instead of
        # refusing a folder that already holds checkpoints; a fresh folder starts from scratch.
        train(TrainConfig(model=args.model, data=args.data, epochs=args.epochs, seed=seed, out=out, quiet=True,
                          resume=True, val_fraction=args.val_fraction))
        seconds = time.perf_counter() - start
    probs, labels = checkpoint_probs(resolve_checkpoint(out)[1], args.data, batch_size=256)
    with open(os.path.join(out, "metrics.json")) as f:
        history = json.load(f)
    return probs, labels, seconds, history


def ensemble_hits(probs: torch.Tensor, labels: torch.Tensor) -> int:
    """Images the softmax mean of the members ``probs`` (members x images x classes) gets right."""
    return int((probs.mean(0).argmax(1) == labels).sum())


def held_out_loss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The cross-entropy of softmax probabilities ``probs`` (images x classes): of an ensemble, the log of its
    mean softmax, as ``evaluate`` reports it."""
    picked = probs.gather(1, labels[:, None]).squeeze(1)
    return float(-picked.clamp_min(torch.finfo(probs.dtype).tiny).log().mean())


def subset_margins(probs: torch.Tensor, labels: torch.Tensor, k: int) -> dict:
    """Every k-subset of the members: its softmax-mean ensemble's hits minus its best member's and minus its
    members' mean hits; and whether its held-out loss is below its best (lowest-loss) member's."""
    hits = (probs.argmax(2) == labels).sum(1).float()
    losses = torch.tensor([held_out_loss(p, labels) for p in probs])
    best, mean, loss_gain = [], [], []
    for subset in itertools.combinations(range(len(probs)), k):
        chosen = list(subset)
        ensemble = ensemble_hits(probs[chosen], labels)
        best.append(ensemble - float(hits[chosen].max()))
        mean.append(ensemble - float(hits[chosen].mean()))
        loss_gain.append(float(losses[chosen].min()) - held_out_loss(probs[chosen].mean(0), labels))
    return {"subsets": len(best), "beats_best": sum(m > 0 for m in best), "ties_best": sum(m == 0 for m in best),
            "below_best": sum(m < 0 for m in best), "mean_margin_vs_best": statistics.fmean(best),
            "beats_mean": sum(m > 0 for m in mean), "mean_margin_vs_mean": statistics.fmean(mean),
            "member_losses": losses.tolist(), "beats_best_loss": sum(g > 0 for g in loss_gain),
            "mean_loss_gain_vs_best": statistics.fmean(loss_gain)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list_models(), default="lenet5", metavar="MODEL",
                        help="a name from classicnets_ext.models.list_models()")
    parser.add_argument("--data", default="mnist5k", help=f"{', '.join(BUILTIN)}, or an ImageFolder directory")
    parser.add_argument("--members", type=harness.at_least(2), default=12)
    parser.add_argument("--k", type=harness.at_least(2), default=3, help="ensemble size (train --ensemble K)")
    parser.add_argument("--seed", type=harness.at_least(0), default=0, help="the first member's seed")
    parser.add_argument("--epochs", type=harness.at_least(1), default=20)
    parser.add_argument("--target", type=float, default=0.975, help="a member's top-1 to count as reached")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="the held-out share of a built-in set (default: train's, 0.1: 500 of mnist5k)")
    parser.add_argument("--out", default=os.path.join("results", "bench_ensemble"))
    args = parser.parse_args(argv)
    if args.k > args.members:
        parser.error(f"--k {args.k}: must be at most --members ({args.members})")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction {args.val_fraction}: a fraction, between 0 and 1")
    if not 0 <= args.target <= 1:
        parser.error(f"--target {args.target}: a top-1 fraction, between 0 and 1")
    # The name only, as train's first check: what is inside a directory is read (each image) when the first
    # member trains, and a DataError then is one line too.
    try:
        check_data(args.data)
    except DataError as error:
        parser.error(str(error))
    harness.writable_dir(parser, "--out", args.out)

    try:
        runs = [member(args, seed) for seed in range(args.seed, args.seed + args.members)]
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    probs, labels = torch.stack([r[0] for r in runs]), runs[0][1]
    n = len(labels)
    wrong = probs.argmax(2) != labels
    hits = (~wrong).sum(1)
    result = {
        "model": args.model, "data": args.data, "epochs": args.epochs, "images": n, "k": args.k,
        "seeds": list(range(args.seed, args.seed + args.members)),
        "member_hits": hits.tolist(), "member_seconds": [r[2] for r in runs],
        "members_reaching_target": int((hits >= args.target * n).sum()), "target": args.target,
        # the first epoch whose held-out top-1 reached the target (None: none did), for "within N epochs"
        "first_epoch_at_target": [next((row["epoch"] for row in r[3] if row["val_top1"] >= args.target), None)
                                  for r in runs],
        "all_members_ensemble_hits": ensemble_hits(probs, labels),
        "wrong_by_every_member": int(wrong.all(0).sum()), "wrong_by_some_member": int(wrong.any(0).sum()),
        # images_wrong_by[k]: the held-out images exactly k members get wrong (k = 0 ... N)
        "images_wrong_by": torch.bincount(wrong.sum(0), minlength=args.members + 1).tolist(),
        **subset_margins(probs, labels, args.k),
    }

    pct = [f"{100 * h / n:.1f}" for h in result["member_hits"]]
    print(f"{args.model} on {args.data}, {args.epochs} epochs, {n} held-out images, seeds "
          f"{args.seed}..{args.seed + args.members - 1}")
    print(f"members' top-1 %: {' '.join(pct)} (mean {100 * hits.float().mean() / n:.2f}%); "
          f"{result['members_reaching_target']} of {args.members} end at or above {100 * args.target:g}%")
    firsts = [e for e in result["first_epoch_at_target"] if e is not None]
    print(f"{len(firsts)} of {args.members} reach it at some epoch"
          + (f" (first at epoch {', '.join(map(str, sorted(firsts)))})" if firsts else ""))
    trained = [s for s in result["member_seconds"] if s == s]
    if trained:
        print(f"training time per member: {min(trained):.1f}-{max(trained):.1f} s")
    print(f"ensembles of {args.k} ({result['subsets']} subsets): beat their best member "
          f"{result['beats_best']}, tie {result['ties_best']}, below {result['below_best']}; mean margin "
          f"{result['mean_margin_vs_best']:+.2f} images vs the best member, "
          f"{result['mean_margin_vs_mean']:+.2f} vs the members' mean (beats the mean in {result['beats_mean']})")
    print(f"held-out loss: members {min(result['member_losses']):.4f}-{max(result['member_losses']):.4f}; the "
          f"ensemble's is below its lowest-loss member's in {result['beats_best_loss']} of {result['subsets']} "
          f"subsets (by {result['mean_loss_gain_vs_best']:.4f} on average)")
    print(f"ensemble of all {args.members}: {100 * result['all_members_ensemble_hits'] / n:.2f}%; images wrong "
          f"for every member: {result['wrong_by_every_member']}, for at least one: {result['wrong_by_some_member']}")
    by = result["images_wrong_by"]
    print("images wrong for k members: " + ", ".join(f"k={k}: {c}" for k, c in enumerate(by) if k and c)
          + f" (a majority of members: {sum(by[args.members // 2 + 1:])})")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_ensemble.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
