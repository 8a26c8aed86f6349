"""Decoding radiographs for the model: LUTs, MONOCHROME1, spacing sources, resampling."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from tests.dicom_files import make_radiograph
from triage_node.assessment import NotScorable
from triage_node.report.heatmap import windowed_grayscale
from triage_node.score.decode import FALLBACK_SPACING_MM, decode_radiograph, resample_to_spacing


def _ramp(ds: Dataset) -> np.ndarray:
    values = (np.arange(ds.Rows * ds.Columns) % 4096).astype(np.uint16).reshape(ds.Rows, -1)
    ds.PixelData = values.tobytes()
    return values


def test_monochrome2_with_rescale_and_imager_spacing() -> None:
    ds = make_radiograph(rows=32, columns=24)
    raw = _ramp(ds)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    decoded = decode_radiograph(ds)
    np.testing.assert_array_equal(decoded.pixels, 2.0 * raw - 100)
    assert decoded.spacing_mm == (0.15, 0.15)
    assert decoded.spacing_source == "ImagerPixelSpacing"
    assert decoded.warnings == ()


def test_monochrome1_is_inverted_after_the_window() -> None:
    ds = make_radiograph(rows=32, columns=24)
    raw = _ramp(ds)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    decoded = decode_radiograph(ds)
    # Raw high values (dark in MONOCHROME1) come out low: bone is bright.
    assert np.corrcoef(decoded.pixels.ravel(), raw.ravel())[0, 1] < -0.99
    narrow = make_radiograph(rows=32, columns=24)
    _ramp(narrow)
    narrow.WindowCenter, narrow.WindowWidth = 300, 100
    clipped = decode_radiograph(narrow).pixels
    assert len(np.unique(clipped[raw < 240])) == 1 and len(np.unique(clipped[raw > 360])) == 1
    assert len(np.unique(clipped[(raw > 260) & (raw < 340)])) > 50


def test_spacing_preference_and_fallback_warning() -> None:
    ds = make_radiograph(rows=16, columns=16)
    ds.EstimatedRadiographicMagnificationFactor = 1.2
    decoded = decode_radiograph(ds)
    assert decoded.spacing_mm == pytest.approx((0.125, 0.125))
    assert "Magnification" in decoded.spacing_source
    ds.PixelSpacing = [0.1, 0.1]
    assert decode_radiograph(ds).spacing_source == "PixelSpacing"
    del ds.PixelSpacing, ds.ImagerPixelSpacing
    decoded = decode_radiograph(ds)
    assert decoded.spacing_source == "fallback"
    assert decoded.spacing_mm == (FALLBACK_SPACING_MM, FALLBACK_SPACING_MM)
    assert any("no pixel spacing" in w for w in decoded.warnings)


def test_undecodable_or_colour_is_not_scorable() -> None:
    ds = make_radiograph(rows=16, columns=16)
    ds.PixelData = b"\x00" * 10
    with pytest.raises(NotScorable, match=str(ds.SOPInstanceUID)):
        decode_radiograph(ds)
    ds = make_radiograph(rows=16, columns=16)
    ds.SamplesPerPixel = 3
    with pytest.raises(NotScorable, match="colour"):
        decode_radiograph(ds)


def test_resample_to_spacing() -> None:
    rows, cols = np.mgrid[:300, :200]
    image = (rows + 2 * cols).astype(float)  # linear: resampling must keep it exact
    out = resample_to_spacing(image, (0.15, 0.1), 0.5)
    assert out.shape == (90, 40)
    assert out[10, 7] == pytest.approx(image[0, 0] + (10 * 0.5 / 0.15) + 2 * (7 * 5), rel=0.02)
    checker = ((rows // 1 + cols // 1) % 2).astype(float)
    # Anti-aliasing: a 1-pixel checkerboard becomes flat grey, not a moire pattern.
    assert resample_to_spacing(checker, (0.1, 0.1), 0.5)[5:-5, 5:-5].std() < 0.05


def test_the_heatmap_shows_the_pixels_the_model_reads() -> None:
    """One windowing for both: the heatmap is the model's input mapped onto [0, 1]."""
    windowed = make_radiograph(rows=32, columns=24)
    _ramp(windowed)
    windowed.RescaleSlope, windowed.RescaleIntercept = 2, -100
    windowed.WindowCenter, windowed.WindowWidth = 700, 300
    with_lut = make_radiograph(rows=32, columns=24)
    raw = _ramp(with_lut)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]  # 12-bit entries, as DX and CR VOI LUTs often are
    item.LUTData = [min(4095, 3 * i) for i in range(4096)]
    with_lut.VOILUTSequence = [item]
    for ds, (low, high) in ((windowed, (-100.0, 8090.0)), (with_lut, (0.0, 4095.0))):
        model_input = decode_radiograph(ds).pixels
        picture = windowed_grayscale(ds)
        np.testing.assert_allclose(picture, (model_input - low) / (high - low), atol=1e-6)
    np.testing.assert_array_equal(decode_radiograph(with_lut).pixels, np.minimum(3.0 * raw, 4095))


def _pydicom_display(
    ds: Dataset, output_range: tuple[float, float] | None, dtype: type, invert: str
) -> np.ndarray:
    """display_pixels as pydicom's LUT functions compute it on the whole image (the
    reference the table lookup must reproduce bit for bit)."""
    from highdicom.pixels import apply_voi_window
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    from triage_node.display import modality_range, voi_range

    values = np.asarray(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds))
    native = voi_range(ds)
    if output_range is None:
        low, high = native or modality_range(ds)
        pixels = np.asarray(values, dtype=dtype)
    else:
        if native is None:
            native = float(values.min()), max(float(values.max()), float(values.min()) + 1.0)
        low, high = output_range
        pixels = apply_voi_window(
            values, window_center=(native[0] + native[1]) / 2.0,
            window_width=native[1] - native[0], voi_lut_function="LINEAR_EXACT",
            output_range=output_range, dtype=dtype,
        )  # fmt: skip
    if ds.PhotometricInterpretation == "MONOCHROME1":
        if invert == "pixel_range":
            low, high = float(pixels.min()), float(pixels.max())
        pixels = (low + high) - pixels
    return pixels


@pytest.mark.parametrize(
    "setup",
    ["window", "linear_exact", "sigmoid", "rescale", "voi_lut", "signed", "no_voi", "mono1"],
)
def test_display_pixels_are_pydicoms_bit_for_bit(setup: str) -> None:
    """The one-pass table lookup gives exactly the numbers of pydicom's LUT functions, so
    the model's inputs do not move (docs/model.md, "Scoring speed and memory")."""
    from triage_node.display import display_pixels

    ds = make_radiograph(rows=40, columns=30)
    rng = np.random.default_rng(7)
    values = rng.integers(0, 4096, size=(40, 30)).astype(np.uint16)
    ds.WindowCenter, ds.WindowWidth = 1800.5, 1500
    if setup == "linear_exact":
        ds.VOILUTFunction = "LINEAR_EXACT"
    elif setup == "sigmoid":
        ds.VOILUTFunction = "SIGMOID"
    elif setup == "rescale":
        ds.RescaleSlope, ds.RescaleIntercept = 0.37, -12.5
    elif setup == "voi_lut":
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 12]
        item.LUTData = list(((np.arange(4096) ** 0.5) * 64).astype(int))
        ds.VOILUTSequence = [item]
    elif setup == "signed":
        ds.PixelRepresentation = 1
        values = (values.astype(np.int16) - 2048).astype(np.int16).view(np.uint16)
    elif setup == "no_voi":
        del ds.WindowCenter, ds.WindowWidth
    elif setup == "mono1":
        ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = values.tobytes()
    for output_range, dtype, invert in (
        (None, np.float64, "pixel_range"),  # the model's inputs
        ((0.0, 1.0), np.float32, "output_range"),  # the heatmap's picture
    ):
        expected = _pydicom_display(ds, output_range, dtype, invert)
        got = display_pixels(ds, output_range=output_range, dtype=dtype, invert=invert)  # type: ignore[arg-type]
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
