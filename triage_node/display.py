"""Pixels for display: the stored values of a radiograph windowed to what a viewer shows.

:func:`display_pixels` is the one implementation, used by the model's decoder
(:func:`triage_node.score.decode.decode_radiograph`) and by the heatmap
(:func:`triage_node.report.heatmap.windowed_grayscale`). Steps, as PS3.3 C.11
orders them:

1. Stored values: Pixel Data decoded by pydicom (``Dataset.pixel_array``, cached
   on the dataset, honouring Bits Stored).
2. Modality LUT: the Modality LUT Sequence or Rescale Slope/Intercept
   (pydicom ``apply_modality_lut``).
3. VOI: the first VOI LUT Sequence item, else the first Window Center/Width
   with its VOI LUT Function (pydicom ``apply_voi_lut``). Its output range:
   0..2^n-1 of the LUT's entries, or for a window the range of the Modality
   LUT output (:func:`modality_range`).
4. Onto ``output_range`` ((0, 1) for a picture): a LINEAR_EXACT window spanning
   the VOI output range (highdicom ``apply_voi_window``, which also clips). With
   no VOI in the file, the window spans ``fallback_percentiles`` of the Modality
   LUT output. ``output_range=None`` skips this step: the VOI output as it is,
   or the Modality LUT output when there is no VOI (the model's inputs).
5. MONOCHROME1 inverted so that dense bone is bright (Presentation LUT Shape is
   not consulted): mirrored about the output range, as a viewer does, or with
   ``invert="pixel_range"`` about the image's own minimum and maximum (the
   model's convention; its bundles were trained on it, and mirroring about the
   output range instead moves a MONOCHROME1 sample's probabilities by ~1e-4).

Why the VOI step is pydicom's and not highdicom's ``Image.get_frame`` (0.28):
the model's inputs must stay bit-identical. ``get_frame`` computes the same
ramp in another order (window folded into stored values, ``(x - min) * scale``)
and so differs from pydicom by float rounding (up to 7e-12 on ``samples/``);
the shipped demo head has a zero-variance feature (the z-scored ROI's
``firstorder_Mean``, scaler scale ~1e-15) that turns such noise into
probability changes of up to 4e-3 on ``samples/``. ``get_frame`` also deviates
from PS3.3 where pydicom does not: with Rescale Slope != 1 it subtracts
LINEAR's 1 from the width after dividing by the slope (a steeper ramp), and it
accepts 8- or 16-bit VOI LUT entries only (DX/CR use 12) and stretches the
entries' minimum..maximum over the output range instead of 0..2^n-1. The last
step, a plain linear map with clipping, is highdicom's.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from highdicom.pixels import apply_voi_window
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

#: How MONOCHROME1 is inverted: about the output range (as a viewer's Presentation
#: LUT does) or about the image's own minimum and maximum (the model's inputs).
Inversion = Literal["output_range", "pixel_range"]


def _uid(ds: pydicom.Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOP Instance UID>"))


def modality_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The range of the Modality LUT output, onto which pydicom maps a window.

    A Modality LUT Sequence: 0..2^n-1 of its entries; else the range of Bits
    Stored for the Pixel Representation, rescaled when Rescale Slope and
    Intercept are both present (as pydicom's ``apply_windowing``).
    """
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def voi_range(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The output range of the VOI that ``apply_voi_lut`` applies; None when there is none.

    The same choice as pydicom's: a usable first VOI LUT Sequence item wins over
    Window Center/Width.
    """
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            return 0.0, float(2 ** int(item.LUTDescriptor[2]) - 1)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return modality_range(ds)
    return None


#: Integer stored values with at most this many possible values go through a lookup table.
_MAX_TABLE = 2**16


def _stored_table(ds: pydicom.Dataset) -> tuple[npt.NDArray[Any], npt.NDArray[Any]] | None:
    """Every possible stored value of ``ds.pixel_array`` and the image as indices into them.

    None when the stored values are not integers of at most 16 bits. For signed
    values the index is ``x + 2^(n-1)``, computed without a wider copy.
    """
    stored = ds.pixel_array
    dtype = stored.dtype
    if dtype.kind not in "iu" or 2 ** (8 * dtype.itemsize) > _MAX_TABLE:
        return None
    info = np.iinfo(dtype)
    every = np.arange(info.min, info.max + 1, dtype=dtype)
    if dtype.kind == "u":
        return every, stored
    unsigned = np.dtype(f"u{dtype.itemsize}")
    return every, stored.view(unsigned) ^ unsigned.type(2 ** (8 * dtype.itemsize - 1))


def display_pixels(
    ds: pydicom.Dataset,
    *,
    output_range: tuple[float, float] | None = (0.0, 1.0),
    dtype: type[np.floating[Any]] = np.float64,
    fallback_percentiles: tuple[float, float] = (0.0, 100.0),
    invert: Inversion = "output_range",
) -> npt.NDArray[np.floating[Any]]:
    """``ds``'s single greyscale frame as a viewer displays it (see the module docstring).

    ``output_range``: where the VOI output range is mapped (values outside are
    clipped), or ``None`` for the VOI's own range. ``dtype``: the float type of
    the result (float32 halves a picture's memory). ``fallback_percentiles``:
    without VOI LUT or window, the window spans these percentiles of the Modality
    LUT output (not used when ``output_range`` is None). ``invert``: see
    :data:`Inversion`.

    Raises what pydicom raises when the pixel data do not decode or the VOI is
    unusable, and ``ValueError`` naming the SOP Instance UID for a colour or
    multi-frame image.
    """
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"instance {_uid(ds)}: Photometric Interpretation {photometric!r}")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ValueError(f"instance {_uid(ds)}: multi-frame images are not supported")
    if ds.pixel_array.ndim != 2:
        raise ValueError(f"instance {_uid(ds)}: pixel array has shape {ds.pixel_array.shape}")
    native = voi_range(ds)
    table = _stored_table(ds)
    if table is not None and (output_range is None or native is not None):
        # Every step maps each stored value on its own (none looks at other pixels; the
        # MONOCHROME1 inversion about the image's range uses only the values present):
        # the steps run on every possible stored value once and the image is looked up
        # in the result, a single pass over a full-size radiograph instead of several
        # float64 copies and boolean masks (pydicom's windowing took ~0.2 s a call on a
        # 12-megapixel image). The numbers are the same, bit for bit.
        every, index = table
        values = np.asarray(apply_voi_lut(apply_modality_lut(every, ds), ds))
        present = np.bincount(index.ravel(), minlength=len(every)) > 0
        mapped = _onto_output(
            values, ds, photometric, native, output_range, dtype, fallback_percentiles, invert,
            present,
        )  # fmt: skip
        pixels: npt.NDArray[np.floating[Any]] = mapped[index]
        return pixels
    if table is not None:
        values = np.asarray(apply_voi_lut(apply_modality_lut(table[0], ds), ds))[table[1]]
    else:
        values = np.asarray(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds))
    return _onto_output(
        values, ds, photometric, native, output_range, dtype, fallback_percentiles, invert, None
    )


def _onto_output(
    values: npt.NDArray[Any],
    ds: pydicom.Dataset,
    photometric: str,
    native: tuple[float, float] | None,
    output_range: tuple[float, float] | None,
    dtype: type[np.floating[Any]],
    fallback_percentiles: tuple[float, float],
    invert: Inversion,
    present: npt.NDArray[np.bool_] | None,
) -> npt.NDArray[np.floating[Any]]:
    """Steps 4-5 on VOI output ``values`` (an image, or a table of every stored value with
    ``present`` marking those in the image)."""
    pixels: npt.NDArray[np.floating[Any]]
    if output_range is None:
        low, high = native or modality_range(ds)
        pixels = np.asarray(values, dtype=dtype)
    else:
        if native is None:
            lowest, highest = (float(v) for v in np.percentile(values, fallback_percentiles))
            native = lowest, max(highest, lowest + 1.0)
        low, high = output_range
        pixels = apply_voi_window(
            values,
            window_center=(native[0] + native[1]) / 2.0,
            window_width=native[1] - native[0],
            voi_lut_function="LINEAR_EXACT",
            output_range=output_range,
            dtype=dtype,
        )
    del values  # a full-size radiograph is tens of MB per float64 copy
    if photometric == "MONOCHROME1":
        if invert == "pixel_range":
            shown = pixels if present is None else pixels[present]
            low, high = float(shown.min()), float(shown.max())
        pixels = (low + high) - pixels  # a new array: ``pixels`` may be pydicom's cached one
    return pixels
