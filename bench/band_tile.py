"""Tile size of the banded attention paths against the band's width: the measurement behind
``transformer.attention.block_sparse.band_tile``.

    python bench/band_tile.py                                   # bands 15 ... 1023 at 8192 tokens
    python bench/band_tile.py --length 4096 --bands 63,255 --tiles 32,64,128 --rounds 7

For each band width, one bidirectional neighbourhood layer (width 128, 4 heads, batch 1, fp32) runs forward +
backward with every tile size in turn (``band_tile`` replaced for the run), rounds interleaved over the tiles,
medians reported in ms; the last column is the tile ``band_tile`` picks. The outputs do not depend on the tile
(tests/transformer/attention/test_catalog.py), only the time does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import transformer.attention.neighborhood as neighborhood  # noqa: E402
from transformer.attention import get_attention  # noqa: E402
from transformer.attention.block_sparse import band_tile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--bands", default="15,31,63,127,255,1023")
    parser.add_argument("--tiles", default="16,32,64,128,256")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bands, tiles = [int(b) for b in args.bands.split(",")], [int(t) for t in args.tiles.split(",")]
    print(f"# neighbourhood layer, width 128, 4 heads, {args.length} tokens, batch 1, fp32, forward + backward; "
          f"median of {args.rounds} interleaved rounds (ms)\n")
    print("| band | " + " | ".join(f"tile {t}" for t in tiles) + " | band_tile picks |")
    print("|---:|" + "---:|" * (len(tiles) + 1))
    chosen = neighborhood.band_tile
    try:
        for band in bands:
            torch.manual_seed(0)
            layer = get_attention("neighborhood", 128, 4, neighborhood_size=band)
            x = torch.randn(1, args.length, 128, requires_grad=True)
            times = {t: [] for t in tiles}
            for _ in range(args.rounds):
                for tile in tiles:
                    neighborhood.band_tile = lambda width, tile=tile: tile
                    layer(x).sum().backward()  # warm-up at this tile
                    t0 = time.perf_counter()
                    layer(x).sum().backward()
                    times[tile].append(time.perf_counter() - t0)
            ms = {t: statistics.median(v) * 1e3 for t, v in times.items()}
            best = min(ms, key=ms.get)
            cells = [f"**{ms[t]:.1f}**" if t == best else f"{ms[t]:.1f}" for t in tiles]
            print(f"| {band} | " + " | ".join(cells) + f" | {band_tile(band)} |")
    finally:
        neighborhood.band_tile = chosen


if __name__ == "__main__":
    main()
