"""Load one image file (or an already-loaded PIL image) as an 8-bit RGB PIL image, with limits and clear errors.

Every model adapter takes RGB PIL images, while medical data arrive as JPEG, PNG (8- or 16-bit, grey,
palette, with alpha) or DICOM. `load_image` is the single place that turns all of them into RGB, so
evidence boxes (normalised to the returned image) mean the same thing for every source.

Conversions (each is a choice a reader should know about):
  * 8-bit grey / palette / CMYK ... -> RGB through PIL's own conversion.
  * Alpha (RGBA, LA, palette with transparency) -> composited on **black**: radiographs and scans have
    black backgrounds, so a transparent margin stays background instead of turning into a white frame.
  * 16-bit / 32-bit integer and float images ('I;16', 'I', 'F') -> linearly rescaled to 0..255 with the
    image's **own min/max** (a constant image becomes black). There is no window information in a PNG,
    so min-max is the only rule that never clips evidence.
  * DICOM (detected by the 'DICM' magic at byte 128, or a '.dcm' suffix) via pydicom, imported lazily:
    stored values -> RescaleSlope/RescaleIntercept -> the file's WindowCenter/WindowWidth (first value
    when several are given; linear VOI function of DICOM PS3.3 C.11.2.1.2.1), else min-max;
    MONOCHROME1 is inverted so that high attenuation is bright as in MONOCHROME2; a multi-frame file
    gives its first frame and a note.
  * EXIF orientation is **not** applied: the returned pixels are the stored ones, as model processors
    see them, so boxes refer to the stored pixel grid.

Notes (e.g. "multi-frame DICOM: using frame 0 of 30") are stored in `image.info["vitos_notes"]` and logged.

Limits: files larger than `max_bytes` and images with more than `max_pixels` pixels (decompression
bombs) are refused before decoding.

Usage:
    from vitos.images import load_image, ImageError
    try:
        image = load_image("scan.dcm")          # PIL.Image.Image, mode "RGB"
    except ImageError as err:
        print(err)                              # names the file, what is wrong, and how to fix it
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 200 * 2**20

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


class ImageError(ValueError):
    """An image could not be loaded; the message names the file, the problem and a fix."""


def load_image(
    path_or_image: str | os.PathLike[str] | Image.Image,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Return `path_or_image` as an 8-bit RGB PIL image (see the module docstring for the conversions).

    Args:
        path_or_image: a file path (JPEG, PNG, any format PIL reads, or DICOM) or a PIL image.
        max_pixels: refuse images with more pixels than this (width * height, first frame).
        max_bytes: refuse files larger than this many bytes (not checked for in-memory images).

    Raises:
        ImageError: missing file, not an image, corrupt or truncated data, over a limit, or a DICOM
            file without pydicom installed.
    """
    if isinstance(path_or_image, Image.Image):
        name = getattr(path_or_image, "filename", "") or "<in-memory image>"
        _check_pixels(path_or_image.size, max_pixels, name)
        return _to_rgb(path_or_image, name)

    if not isinstance(path_or_image, (str, os.PathLike)):
        raise ImageError(
            f"load_image expects a file path or a PIL image, got {type(path_or_image).__name__}; "
            "pass a str/pathlib.Path or a PIL.Image.Image"
        )
    path = Path(path_or_image)
    if not path.exists():
        raise ImageError(f"{path}: file not found; check the path (relative paths resolve against {Path.cwd()})")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file (a directory?); pass the path of one image file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageError(
            f"{path}: file is {size:,} bytes, over the limit max_bytes={max_bytes:,}; "
            "downscale the image or raise max_bytes if the file is trusted"
        )
    if size == 0:
        raise ImageError(f"{path}: file is empty (0 bytes); re-download or re-export it")

    if _is_dicom(path):
        return _load_dicom(path, max_pixels)
    return _load_pil(path, max_pixels)


def load_image_bytes(
    data: bytes,
    name: str = "<uploaded image>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """`load_image` for an image held in memory (an HTTP upload, `vitos serve`): the same formats, conversions,
    limits and ImageError messages, which name `name` instead of a path. Nothing is written to disk."""
    label = Path(name)
    if len(data) > max_bytes:
        raise ImageError(f"{name}: image is {len(data):,} bytes, over the limit max_bytes={max_bytes:,}; "
                         "downscale the image or raise the limit")
    if not data:
        raise ImageError(f"{name}: image is empty (0 bytes); send the file's bytes")
    if label.suffix.lower() == ".dcm" or data[128:132] == b"DICM":
        return _load_dicom(label, max_pixels, io.BytesIO(data))
    return _load_pil(label, max_pixels, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------------
# PIL formats


def _load_pil(path: Path, max_pixels: int, source: Any = None) -> Image.Image:
    """`source` (a file object) is read instead of `path`, which then only names the image in messages."""
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces PIL's global bomb warning (no global state is changed).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if source is None else source) as im:
                _check_pixels(im.size, max_pixels, str(path))
                notes = []
                n_frames = getattr(im, "n_frames", 1)
                if n_frames > 1:
                    notes.append(f"multi-frame image: using frame 0 of {n_frames}")
                im.load()
                out = _to_rgb(im, str(path))
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(
            f"{path}: not a recognised image format (PIL could not identify it: {err}); "
            "pass a JPEG, PNG or DICOM file, and check that the file is not HTML or an error page"
        ) from err
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"{path}: PIL refused the image as a decompression bomb ({err}); "
            "downscale the image, or lower max_pixels below PIL's own limit"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(
            f"{path}: corrupt or truncated image data ({err}); re-download or re-export the file"
        ) from err
    _add_notes(out, notes, path)
    return out


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Convert any PIL mode to RGB following the module's rules (alpha on black, 16-bit min-max)."""
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode in _HIGH_DEPTH_MODES:
        values = np.asarray(im, dtype=np.float64)  # (H, W)
        return Image.fromarray(_minmax_to_uint8(values), mode="L").convert("RGB")
    if mode == "RGB":
        return im.copy()
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"{name}: cannot convert PIL mode {mode!r} to RGB ({err}); re-export as PNG or JPEG") from err


def _minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map [min, max] of `values` to [0, 255]; a constant (or empty) array maps to 0."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit "
            f"max_pixels={max_pixels:,} (possible decompression bomb); downscale it or raise max_pixels "
            "if the file is trusted"
        )


def _add_notes(image: Image.Image, notes: list[str], path: Path) -> None:
    if notes:
        image.info["vitos_notes"] = list(notes)
        for note in notes:
            logger.warning("%s: %s", path, note)


# ---------------------------------------------------------------------------------------------------
# DICOM


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _load_dicom(path: Path, max_pixels: int, source: Any = None) -> Image.Image:
    try:
        import pydicom
    except ImportError as err:
        raise ImageError(
            f"{path}: this is a DICOM file but pydicom is not installed; pip install pydicom "
            "(or pip install 'vitos[dicom]')"
        ) from err

    try:
        # force=True reads '.dcm' files written without the 128-byte preamble.
        ds = pydicom.dcmread(path if source is None else source, force=True)
    except Exception as err:  # pydicom raises many types for malformed files
        raise ImageError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err}); re-export it") from err
    if "PixelData" not in ds:
        raise ImageError(
            f"{path}: DICOM file has no PixelData (a structured report or a corrupt file?); "
            "pass an image object (CT, MR, CR, DX, ...)"
        )

    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixels((cols, rows), max_pixels, str(path))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    notes = [f"multi-frame DICOM: using frame 0 of {n_frames}"] if n_frames > 1 else []

    try:
        pixels = _dicom_first_frame(ds, n_frames)  # (R, C) or (R, C, 3)
    except Exception as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageError(
            f"{path}: cannot decode DICOM pixel data (transfer syntax {syntax}; {type(err).__name__}: {err}); "
            "compressed DICOM needs a decoder plugin such as `pip install pylibjpeg pylibjpeg-libjpeg` "
            "or `pip install python-gdcm`"
        ) from err

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1 or pixels.ndim == 3:
        # Colour DICOM: pydicom (>= 3) already converts YBR to RGB; no VOI window applies to colour.
        rgb = pixels[..., :3].astype(np.float64)
        array = rgb.astype(np.uint8) if pixels.dtype == np.uint8 else _minmax_to_uint8(rgb)
        out = Image.fromarray(array, mode="RGB")
    else:
        out = Image.fromarray(_dicom_grey_to_uint8(ds, pixels), mode="L").convert("RGB")
    _add_notes(out, notes, path)
    return out


def _dicom_first_frame(ds: Any, n_frames: int) -> np.ndarray:
    """Decode only frame 0 where pydicom supports it (>= 3.0), so a long series is not decoded whole."""
    try:
        from pydicom.pixels import pixel_array
    except ImportError:  # pydicom 2.x
        arr = ds.pixel_array
        return arr[0] if n_frames > 1 else arr
    return pixel_array(ds, index=0 if n_frames > 1 else None)


def _first_value(value: Any) -> float | None:
    """DICOM multi-valued numbers (MultiValue) -> first value as float; missing/empty -> None."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            if len(value) == 0:
                return None
            value = value[0]
        return float(value)
    except (TypeError, ValueError):
        return None


def _dicom_grey_to_uint8(ds: Any, stored: np.ndarray) -> np.ndarray:
    """Stored values (R, C) -> modality values (slope/intercept) -> VOI window or min-max -> uint8 (R, C)."""
    slope = _first_value(ds.get("RescaleSlope"))
    intercept = _first_value(ds.get("RescaleIntercept"))
    values = stored.astype(np.float64) * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)

    center = _first_value(ds.get("WindowCenter"))
    width = _first_value(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1.0:
        # Linear VOI LUT (DICOM PS3.3 C.11.2.1.2.1): the window [c - w/2, c + w/2] spans the output range.
        scaled = np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)
        grey = np.round(scaled * 255.0).astype(np.uint8)
    else:
        grey = _minmax_to_uint8(values)

    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1":
        # MONOCHROME1 means low values are displayed bright; invert so every output is MONOCHROME2-like.
        grey = 255 - grey
    return grey
