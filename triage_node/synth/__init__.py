"""Synthetic AP pelvis/hip radiograph generator whose bone structure follows bone density.

Public API:

``make_instance(seed, *, size="small", kind="hip", vendor=None, osteoporotic=None,
prosthesis=(False, False), laterality=None, transfer_syntax=None) -> pydicom.Dataset``
    One synthetic image as a complete DICOM dataset (pixel data encoded in the
    vendor's or the requested transfer syntax). ``kind`` is ``"hip"``, ``"chest"``
    or ``"blank"``. ``osteoporotic`` forces the label (``None`` = drawn from the
    population). ``prosthesis`` is (right, left). ``laterality`` ``"L"``/``"R"``
    makes a unilateral hip image. Same arguments, same bytes.

``render_instance(...)`` (same arguments) -> ``SyntheticImage``
    The dataset plus the latent truth: femur masks per side and the subject row.

``generate_cohort(out_dir, n, seed=0, size="full", prevalence=0.38, vendors=None,
jobs=None, progress=True, profiles=None) -> CohortSummary``
    Write ``n`` DICOM files, per-side femur masks, ``labels.csv`` and
    ``oracle.json`` to ``out_dir``. ``profiles``: other sites' acquisition
    profiles to mix (``render_instance(..., profile=NAME)``;
    :data:`triage_node.synth.sites.SITE_PROFILES`); None: the default images.

``VENDORS``: the vendor profile names. See ``docs/synth.md`` for the model.
"""

from __future__ import annotations

from triage_node.synth.cohort import CohortSummary, generate_cohort
from triage_node.synth.instance import SyntheticImage, make_instance, render_instance
from triage_node.synth.vendors import VENDORS

__all__ = [
    "CohortSummary",
    "SyntheticImage",
    "VENDORS",
    "generate_cohort",
    "make_instance",
    "render_instance",
]
