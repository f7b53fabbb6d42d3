"""What a model's image processor does to an image's size, computed from its settings without running it:
`resized_size` (the size an image becomes, to refuse or budget it before the processor allocates it) and
`limit_pixels` (`model.max_pixels`: fewer pixels, so fewer image tokens, set into the processor in the unit its resize
works in). One branch per kind of resize, named by the families that use it.
"""

from __future__ import annotations

import math


def _edge(size, key: str):
    """One field of an image processor's `size`, `crop_size` or `patch_size` (a dict or transformers' SizeDict)."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def resized_size(width: int, height: int, image_processor) -> tuple[int, int]:
    """(width, height) of the largest image `image_processor` makes from a `width` x `height` one, computed from its
    settings without running it, so that a request or record can be refused before the processor allocates it.

    Exact for the resizes that can grow an image: the short side scaled to `size.shortest_edge` (CLIP, LLaVA, GIT;
    capped by `longest_edge`), the square a LLaVA processor pads to first (`do_pad` with `pad_to_square`),
    Qwen2-VL's `smart_resize` within min/max pixels (`size.shortest_edge`/`longest_edge` with a `merge_size`),
    Gemma 4's resize within its soft-token budget, Pix2Struct's patches. For the bounded ones it gives the size the
    image is fitted into: a fixed `height` x `width` (BLIP-2, SigLIP, Gemma 3), `max_height` x `max_width`, the
    `longest_edge` (Idefics3, SmolVLM, rounded up to their `max_image_size` tiles; Pixtral/Mistral 3, never enlarged,
    rounded up to whole tokens), LLaVA-NeXT's best `image_grid_pinpoints` canvas, Mllama's, InternVL's, LFM2-VL's
    and Llama 4's tile canvas. A processor that does not resize gives the input size. Raises ValueError where the
    processor itself would refuse the image (Qwen2-VL beyond an aspect ratio of 200)."""
    if getattr(image_processor, "do_pad", False) and hasattr(image_processor, "pad_to_square"):
        side = max(width, height)  # LLaVA: padded to a square first, then resized
        w, h = _resized(side, side, image_processor)
        return (side, side) if side * side >= w * h else (w, h)
    return _resized(width, height, image_processor)


def _resized(width: int, height: int, ip) -> tuple[int, int]:
    size = getattr(ip, "size", None)
    patch, max_patches = getattr(ip, "patch_size", None), getattr(ip, "max_patches", None)
    if max_patches and _edge(patch, "height"):  # Pix2Struct: as many whole patches as fit max_patches, aspect kept
        ph, pw = _edge(patch, "height"), _edge(patch, "width")
        scale = math.sqrt(max_patches * (ph / height) * (pw / width))
        rows = max(min(int(scale * height / ph), max_patches), 1)
        cols = max(min(int(scale * width / pw), max_patches), 1)
        return cols * pw, rows * ph
    if getattr(ip, "crop_to_patches", False) and max_patches and _edge(size, "height"):  # InternVL: tiles
        th, tw = _edge(size, "height"), _edge(size, "width")
        cols, rows = (1, 1)
        if max_patches > 1:
            from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

            cols, rows = get_optimal_tiled_canvas((height, width), (th, tw), ip.min_patches, max_patches)
        return cols * tw, rows * th
    if getattr(ip, "resize_to_max_canvas", None) is not None and hasattr(ip, "best_canvas"):  # Llama 4: tile canvas
        h, w = ip.best_canvas(height, width)
        return w, h
    if getattr(ip, "encoder_patch_size", None) and hasattr(ip, "_get_split_layout"):  # LFM2-VL: tiles or one resize
        split, rows, cols, h, w = ip._get_split_layout(height, width, **_lfm2_layout(ip))
        return (cols * ip.tile_size, rows * ip.tile_size) if split else (w, h)
    if not getattr(ip, "do_resize", True):
        return width, height
    soft, pool = getattr(ip, "max_soft_tokens", None), getattr(ip, "pooling_kernel_size", None)
    if soft and pool:  # Gemma 4: aspect kept, whole pool x pool patch blocks within max_soft_tokens (upscaled too)
        from transformers.models.gemma4.image_processing_pil_gemma4 import get_aspect_ratio_preserving_size

        h, w = get_aspect_ratio_preserving_size(height, width, patch, soft * pool * pool, pool)
        return w, h
    merge = getattr(ip, "merge_size", None)
    low = getattr(ip, "min_pixels", None) or _edge(size, "shortest_edge")
    high = getattr(ip, "max_pixels", None) or _edge(size, "longest_edge")
    if merge and low and high and _budget_frames(ip) > 1:  # GLM-4.1V: min/max pixels of two frames
        from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize as glm4v_resize

        t = _budget_frames(ip)
        h, w = glm4v_resize(t, height, width, temporal_factor=t, factor=patch * merge, min_pixels=low, max_pixels=high)
        return w, h
    if merge and low and high:  # Qwen2-VL: `size` holds min/max pixels, not edges
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        h, w = smart_resize(height, width, factor=patch * merge, min_pixels=low, max_pixels=high)
        return w, h
    if getattr(ip, "image_grid_pinpoints", None):  # LLaVA-NeXT: resized into the best grid resolution, then padded
        from transformers.image_processing_utils import select_best_resolution

        h, w = select_best_resolution((height, width), ip.image_grid_pinpoints)
        return w, h
    if getattr(ip, "max_image_tiles", None) and _edge(size, "height"):  # Mllama: fitted into a canvas of tiles
        from transformers.models.mllama.image_processing_pil_mllama import get_optimal_tiled_canvas

        h, w = get_optimal_tiled_canvas(height, width, ip.max_image_tiles, _edge(size, "height"))
        return int(w), int(h)
    shortest, longest = _edge(size, "shortest_edge"), _edge(size, "longest_edge")
    if shortest:
        from transformers.image_transforms import get_size_with_aspect_ratio

        h, w = get_size_with_aspect_ratio((height, width), shortest, longest)
        return max(w, 1), max(h, 1)
    if longest and _is_pixtral(ip):  # Mistral 3: the longest side down to `longest_edge` (never up), whole tokens
        unit, scale = _pixtral_unit(ip), min(1.0, longest / max(width, height))
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        return math.ceil(w / unit) * unit, math.ceil(h / unit) * unit
    if longest:  # Idefics3/SmolVLM: the longest side to `longest_edge`, then whole tiles of max_image_size
        scale = longest / max(width, height)
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        tile = _edge(getattr(ip, "max_image_size", None), "longest_edge")
        if tile:
            w, h = math.ceil(w / tile) * tile, math.ceil(h / tile) * tile
        return w, h
    if _edge(size, "max_height") and _edge(size, "max_width"):
        scale = min(_edge(size, "max_height") / height, _edge(size, "max_width") / width)
        return max(1, int(width * scale)), max(1, int(height * scale))
    if _edge(size, "height") and _edge(size, "width"):
        return _edge(size, "width"), _edge(size, "height")
    return width, height


def _lfm2_layout(ip) -> dict:
    names = ("downsample_factor", "min_tiles", "max_tiles", "min_image_tokens", "max_image_tokens",
             "encoder_patch_size", "tile_size", "max_pixels_tolerance")
    layout = {k: getattr(ip, k) for k in names}
    if not ip.do_image_splitting:
        layout["min_tiles"] = layout["max_tiles"] = 1
    return layout


GEMMA4_SOFT_TOKENS = (70, 140, 280, 560, 1120)
"""The soft-token budgets (`max_soft_tokens`) Gemma 4's image processor accepts; it refuses any other."""


def limit_pixels(image_processor, max_pixels: int, family: str = "the model") -> str:
    """Make `image_processor` (in place) resize each image to at most `max_pixels` pixels, in the unit its resize
    works in (see `ModelCfg.max_pixels`); returns what was set, in words. Raises ValueError, naming `family`, for a
    processor that resizes every image to one size, or for a limit below its smallest unit (one merged patch, one
    tile, one grid resolution)."""
    ip, size = image_processor, getattr(image_processor, "size", None)
    patch, max_patches = getattr(ip, "patch_size", None), getattr(ip, "max_patches", None)

    def too_small(unit: str, least: int):
        raise ValueError(f"model.max_pixels {max_pixels}: below {family}'s smallest {unit} ({least} pixels)")

    if max_patches and _edge(patch, "height"):  # Pix2Struct
        unit = _edge(patch, "height") * _edge(patch, "width")
        if max_pixels < unit:
            too_small("patch", unit)
        ip.max_patches = min(max_patches, max_pixels // unit)
        return f"max_patches {ip.max_patches}"
    if getattr(ip, "crop_to_patches", False) and max_patches and _edge(size, "height"):  # InternVL (GOT-OCR2 tiles)
        unit = _edge(size, "height") * _edge(size, "width")
        if max_pixels < unit:
            too_small("tile", unit)
        ip.max_patches = min(max_patches, max_pixels // unit)
        ip.min_patches = min(ip.min_patches, ip.max_patches)
        return f"max_patches {ip.max_patches} (+ a thumbnail tile when an image is cut into several)"
    if getattr(ip, "resize_to_max_canvas", None) is not None and max_patches and _edge(size, "height"):  # Llama 4
        unit = _edge(size, "height") * _edge(size, "width")
        if max_pixels < unit:
            too_small("tile", unit)
        ip.max_patches = min(max_patches, max_pixels // unit)
        return f"max_patches {ip.max_patches} (+ a global tile when an image is cut into several)"
    if getattr(ip, "encoder_patch_size", None) and hasattr(ip, "_get_split_layout"):  # LFM2-VL
        unit = (ip.encoder_patch_size * ip.downsample_factor) ** 2
        if max_pixels < unit:
            too_small("image token", unit)
        ip.max_image_tokens = min(ip.max_image_tokens, max_pixels // unit)  # a whole image's (or thumbnail's) resize
        ip.min_image_tokens = min(ip.min_image_tokens, ip.max_image_tokens)
        ip.max_tiles = min(ip.max_tiles, max_pixels // ip.tile_size**2)
        if ip.max_tiles < ip.min_tiles:  # no tile grid fits: every image is resized whole
            ip.do_image_splitting = False
        grid = f"max_tiles {ip.max_tiles}" if ip.do_image_splitting else "no tiles"
        return f"max_image_tokens {ip.max_image_tokens}, {grid}"
    soft, pool = getattr(ip, "max_soft_tokens", None), getattr(ip, "pooling_kernel_size", None)
    if soft and pool:  # Gemma 4: the largest soft-token budget the processor allows whose images fit
        unit = (patch * pool) ** 2  # pixels per soft token
        budgets = [t for t in GEMMA4_SOFT_TOKENS if t <= soft and t * unit <= max_pixels]
        if not budgets:
            too_small("soft-token budget", GEMMA4_SOFT_TOKENS[0] * unit)
        ip.max_soft_tokens = max(budgets)
        return f"max_soft_tokens {ip.max_soft_tokens} (at most {ip.max_soft_tokens} image tokens per image)"
    merge = getattr(ip, "merge_size", None)
    low = getattr(ip, "min_pixels", None) or _edge(size, "shortest_edge")
    high = getattr(ip, "max_pixels", None) or _edge(size, "longest_edge")
    if merge and low and high:  # Qwen2-VL, GLM-4.1V: `size` holds min/max pixels (GLM's: of two frames)
        unit, frames = (patch * merge) ** 2, _budget_frames(ip)
        if max_pixels < unit:
            too_small("image token", unit)
        new = min(high, max_pixels * frames)
        for obj, key in ((ip, "max_pixels"), (size, "longest_edge")):
            _set(obj, key, new)
        if low > new:
            for obj, key in ((ip, "min_pixels"), (size, "shortest_edge")):
                _set(obj, key, new)
        return f"max_pixels {new // frames} (at most {new // frames // unit} image tokens per image)"
    if getattr(ip, "image_grid_pinpoints", None):  # LLaVA-NeXT/OneVision (apply_max_pixels sets the model too)
        kept = [g for g in ip.image_grid_pinpoints if g[0] * g[1] <= max_pixels]
        if not kept:
            too_small("grid resolution", min(g[0] * g[1] for g in ip.image_grid_pinpoints))
        ip.image_grid_pinpoints = kept
        return f"image_grid_pinpoints {kept}"
    if getattr(ip, "max_image_tiles", None) and _edge(size, "height"):  # Mllama
        unit = _edge(size, "height") * _edge(size, "width")
        if max_pixels < unit:
            too_small("tile", unit)
        ip.max_image_tiles = min(ip.max_image_tiles, max_pixels // unit)
        return f"max_image_tiles {ip.max_image_tiles}"
    tile = _edge(getattr(ip, "max_image_size", None), "longest_edge")
    if _edge(size, "longest_edge") and not _edge(size, "shortest_edge") and tile:  # Idefics3/SmolVLM
        if max_pixels < tile * tile:
            too_small("tile", tile * tile)
        _set(size, "longest_edge", min(_edge(size, "longest_edge"), int(math.sqrt(max_pixels)) // tile * tile))
        return f"longest_edge {_edge(size, 'longest_edge')}"
    if _edge(size, "longest_edge") and _is_pixtral(ip):  # Mistral 3: longest_edge in whole merged patches
        unit = _pixtral_unit(ip)
        if max_pixels < unit * unit:
            too_small("image token", unit * unit)
        _set(size, "longest_edge", min(_edge(size, "longest_edge"), math.isqrt(max_pixels) // unit * unit))
        return f"longest_edge {_edge(size, 'longest_edge')}"
    raise ValueError(f"model.max_pixels does not apply to {family}: its image processor "
                     f"({type(ip).__name__}) gives every image the same number of image tokens")


def _is_pixtral(ip) -> bool:
    return type(ip).__name__.startswith("PixtralImageProcessor")


def _pixtral_unit(ip) -> int:
    """Pixels per side of one image token of a Pixtral image processor: 2 patches (Mistral 3 merges 2x2 patches into
    a token, and its processor resizes to multiples of that; a side in whole pairs is whole tokens for Pixtral-12B)."""
    return 2 * _edge(getattr(ip, "patch_size", None), "height")


def _budget_frames(ip) -> int:
    """The frames a dynamic-resolution image processor's pixel limits count for one image: GLM-4.1V's `smart_resize`
    budgets an image as `temporal_patch_size` (2) frames, so its `longest_edge` is twice the pixels an image gets
    (GLM-4.6V's `Glm46VImageProcessorPil`, a copy of it, too); Qwen2-VL's counts one."""
    return getattr(ip, "temporal_patch_size", 1) if type(ip).__name__.startswith(("Glm4v", "Glm46V")) else 1


def _set(obj, key: str, value) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    elif obj is not None and getattr(obj, key, None) is not None:
        setattr(obj, key, value)
