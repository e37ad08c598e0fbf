"""Position embeddings at other sizes: a ViT's 2-D patch grid, a temporal head's 1-D frame axis.

    ViT:      [prefix + g0*g0, d] --split--> CLS rows [prefix, d] | grid [g0, g0, d]
                 --bicubic (antialiased when shrinking)--> [g1, g1, d] --concat--> [prefix + g1*g1, d]
    temporal: [T0, d] --linear, aligned ends--> [T1, d]   (a CLS slot at row 0 is kept apart)

Both are differentiable, so a trainable backbone or head learns through the resized table: a ViT trained
at 224 px runs at 112 or 160 px from the same weights (multigrid), a temporal head built for 8 frames
initialises one for 32 (ViViT's recipe) or takes 4-frame clips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def interpolate_pos_embed(pe: torch.Tensor, grid: int, *, prefix: int = 1) -> torch.Tensor:
    """A ViT position embedding ``[(1,) prefix + g0^2, d]`` resized to a ``grid x grid`` patch grid.

    The ``prefix`` rows (the CLS) are kept as they are; the patch rows are resampled as a 2-D image with
    bicubic interpolation, as timm and open_clip do when loading weights at another resolution. The
    leading batch axis, if any, is kept. Returns ``pe`` itself when the grid already fits.
    """
    batched = pe.ndim == 3
    rows = pe[0] if batched else pe  # [prefix + g0^2, d]
    if rows.ndim != 2:
        raise ValueError(f"expected a position embedding [(1,) L, d], got {tuple(pe.shape)}")
    g0 = round((rows.shape[0] - prefix) ** 0.5)
    if g0 * g0 != rows.shape[0] - prefix:
        raise ValueError(f"{rows.shape[0]} rows are not {prefix} prefix rows plus a square grid")
    if grid == g0:
        return pe
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    head, patches = rows[:prefix], rows[prefix:]  # [prefix, d], [g0^2, d]
    image = patches.reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()  # [1, d, g0, g0]
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    patches = image.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(rows.dtype)  # [g1^2, d]
    out = torch.cat([head, patches], dim=0)  # [prefix + g1^2, d]
    return out.unsqueeze(0) if batched else out


def resize_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """``[T0, d]`` -> ``[count, d]`` by linear interpolation with aligned ends (first and last rows exact)."""
    t0 = rows.shape[0]
    if count < 1 or t0 < 1:
        raise ValueError(f"need at least one row in and out, got {t0} -> {count}")
    if t0 == count:
        return rows
    if t0 == 1:
        return rows.expand(count, rows.shape[1])
    pos = torch.linspace(0, t0 - 1, count, dtype=torch.float64)  # source position of each new row
    lo = pos.floor().long().clamp(max=t0 - 2)  # [T1] left neighbour
    w = (pos - lo).to(rows.dtype).view(count, 1)  # [T1, 1] weight of the right neighbour
    return rows[lo] * (1 - w) + rows[lo + 1] * w  # [T1, d]


def interpolate_temporal_pos(pe: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize a temporal position embedding ``[1, 1+T0, d]`` (CLS slot first) to ``[1, 1+num_frames, d]``.

    The CLS slot (index 0) is kept as is; the frame rows go through :func:`resize_rows`, so the first and
    last frame rows of the result equal those of ``pe`` exactly.
    """
    if pe.ndim != 3 or pe.shape[0] != 1 or pe.shape[1] < 2:
        raise ValueError(f"expected a position embedding [1, 1+T0, d] with T0 >= 1, got {tuple(pe.shape)}")
    frames = resize_rows(pe[0, 1:], num_frames)  # [T1, d]
    return torch.cat([pe[0, :1], frames], dim=0).unsqueeze(0).contiguous()  # [1, 1+T1, d]
