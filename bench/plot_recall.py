"""Recall@k of Retain against mem0 and published reference points, as one PNG.

Reads the JSON written by the harnesses' `--json-out` (the summary lines are
enough) and draws two panels: LoCoMo evidence recall@k and LongMemEval_S turn
and session recall@k. Reference points are the published figures quoted in
BENCHMARKS.md; they come from other setups (DRAGON over LoCoMo turns; Stella
1.5B with fact-augmented keys on LongMemEval M), so read them as context, not
as a like-for-like comparison.

    python bench/plot_recall.py --locomo /tmp/locomo.json --locomo-before /tmp/locomo_base.json \\
        --mem0 /tmp/vs_mem0.json --lme /tmp/lme.json --lme-before /tmp/lme_base.json --out bench/recall.png

Needs matplotlib (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _summary(path: Path | None, variant: str = "retain") -> dict[str, Any] | None:
    """The summary of `variant` (a `--variant` name, or "retain" for the library's defaults)."""
    if path is None:
        return None
    data = json.loads(path.read_text())
    return data.get("summaries", {}).get(variant, data) if "summaries" in data else data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locomo", type=Path, required=True, help="locomo.py --json-out of the current library")
    parser.add_argument("--locomo-before", type=Path, help="the same for the code before issue 4")
    parser.add_argument("--mem0", type=Path, help="vs_mem0.py --json-out")
    parser.add_argument("--lme", type=Path, required=True, help="longmemeval.py --json-out of the current library")
    parser.add_argument("--lme-before", type=Path, help="the same for the code before issue 4")
    parser.add_argument(
        "--lme-before-variant",
        default="retain",
        help="read --lme-before's summary of this --variant (e.g. the earlier settings)",
    )
    parser.add_argument("--lme-title", default="LongMemEval_S dev split (--every 2), recall@k")
    parser.add_argument("--out", type=Path, default=Path("bench/recall.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    ks = [1, 5, 10, 25]
    for label, path, style in (("Retain (issue 4)", args.locomo, "o-"), ("Retain before", args.locomo_before, "o--")):
        s = _summary(path)
        if s is not None:
            left.plot(ks, [s[f"recall@{k}"] for k in ks], style, label=label, color="tab:blue")
    if args.mem0 is not None:
        m = json.loads(args.mem0.read_text())
        side = m.get("mem0") or m.get("summary", {}).get("mem0") or {}
        points = [(k, side[f"recall@{k}"]) for k in (1, 5, 10, 25) if f"recall@{k}" in side]
        if points:
            left.plot(*zip(*points, strict=True), "s-", label="mem0 2.2.1 (semantic only, offline)", color="tab:red")
    left.errorbar(
        [5, 10, 25],
        [0.58, 0.67, 0.785],
        yerr=[0.01, 0.01, 0.015],
        fmt="D",
        color="gray",
        capsize=4,
        label="DRAGON (LoCoMo paper)",
    )
    left.set(
        title="LoCoMo dev split, evidence recall@k (cat. 1-4)", xlabel="k", ylabel="recall", xscale="log", ylim=(0, 1)
    )
    left.set_xticks(ks, [str(k) for k in ks])
    left.axhline(0.75, color="tab:blue", lw=0.6, ls=":")
    left.legend(loc="lower right", fontsize=8)

    lks = [1, 5, 10]
    lme_runs = (
        ("Retain (issue 4)", args.lme, "-", "retain"),
        ("Retain before", args.lme_before, "--", args.lme_before_variant),
    )
    for label, path, style, variant in lme_runs:
        s = _summary(path, variant)
        if s is None:
            continue
        right.plot(lks, [s[f"turn_recall@{k}"] for k in lks], "o" + style, color="tab:blue", label=f"{label}, turn")
        right.plot(
            lks, [s[f"session_recall@{k}"] for k in lks], "^" + style, color="tab:green", label=f"{label}, session"
        )
    right.plot([5, 10], [0.644, 0.784], "D", color="gray", label="Stella 1.5B + fact keys (M), turn")
    right.plot([5, 10], [0.732, 0.862], "v", color="gray", label="Stella 1.5B + fact keys (M), session")
    right.set(title=args.lme_title, xlabel="k", ylabel="recall", xscale="log", ylim=(0, 1))
    right.set_xticks(lks, [str(k) for k in lks])
    right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(json.dumps({"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
