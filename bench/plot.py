"""Draws bench/results.json as a PNG: time against spec size, per approach (run by .venv-bench's python)."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dest: str) -> None:
    rows = json.load(open(src))["specs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "first_s", "first converge"), (axes[1], "noop_s", "no-op re-run")):
        for approach in dict.fromkeys(r["approach"] for r in rows):
            points = sorted((r["n"], r[key]) for r in rows if r["approach"] == approach)
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=approach)
        ax.set(title=f"{title}, 3 hosts", xlabel="containers in the spec (each with a volume and a bind)",
               ylabel="wall time (s)", xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:])
