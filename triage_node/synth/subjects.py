"""Draw synthetic subjects: sex, age, height, weight, DXA T-score and per-side bone density.

The model (all in T-score units):

* ``bone_status = mean(age, sex, weight) + individual variation`` (older, female,
  lighter: lower), with a cohort offset chosen so that the expected prevalence of
  T <= -2.5 matches the requested one;
* ``density_left/right = bone_status + side variation`` (what the image shows);
* ``t_score = bone_status + DXA variation`` (the reference standard, measured
  independently of the image).

The two noise terms make the label imperfectly recoverable even from the exact
latent densities: that gap is the "oracle AUC" ceiling (about 0.95).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

OSTEOPOROSIS_T = -2.5
FEMALE_FRACTION = 3632 / 4308  # the reference study's population
INDIVIDUAL_SD = 0.95
SIDE_SD = 0.45
DXA_SD = 0.35


@dataclass(frozen=True)
class Subject:
    """One synthetic patient: clinical covariates and latent bone truth."""

    sex: str  # "F" or "M"
    age: float  # years
    height_cm: float
    weight_kg: float
    bone_status: float  # T-score units, before side/DXA variation
    density_right: float  # T-score units, what the right hip shows
    density_left: float
    t_score: float  # femoral-neck DXA T-score (reference standard)

    @property
    def label(self) -> int:
        """1 = osteoporosis (T <= -2.5)."""
        return int(self.t_score <= OSTEOPOROSIS_T)


def _draw_clinical(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    male = rng.random(n) >= FEMALE_FRACTION
    young = rng.random(n) < 0.08
    age = np.where(young, rng.uniform(30.0, 50.0, n), np.clip(rng.normal(70.0, 9.0, n), 50, 95))
    height = np.where(male, rng.normal(170.0, 6.5, n), rng.normal(156.0, 6.0, n))
    bmi = np.clip(rng.normal(23.8, 3.6, n), 15.0, 42.0)
    weight = bmi * (height / 100.0) ** 2
    status = (
        -1.75
        - 0.035 * (age - 70.0)
        + 0.04 * (weight - 58.0)
        + 0.7 * male
        + rng.normal(0.0, INDIVIDUAL_SD, n)
    )
    return {"male": male, "age": age, "height": height, "weight": weight, "status": status}


@functools.lru_cache(maxsize=32)
def prevalence_offset(prevalence: float) -> float:
    """T-score shift that makes P(T <= -2.5) equal ``prevalence`` in expectation.

    Computed on a fixed reference population so it is the same in every process.
    """
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    rng = np.random.default_rng(20240531)
    ref = _draw_clinical(rng, 200_000)
    t = ref["status"] + rng.normal(0.0, DXA_SD, ref["status"].shape)
    return float(OSTEOPOROSIS_T - np.quantile(t, prevalence))


def draw_subject(
    rng: np.random.Generator, prevalence: float = 0.38, osteoporotic: bool | None = None
) -> Subject:
    """Draw one subject; ``osteoporotic`` forces the label by rejection sampling."""
    offset = prevalence_offset(prevalence)
    for _ in range(10_000):
        c = _draw_clinical(rng, 1)
        status = float(c["status"][0]) + offset
        side = rng.normal(0.0, SIDE_SD, 2)
        t = status + float(rng.normal(0.0, DXA_SD))
        subject = Subject(
            sex="M" if bool(c["male"][0]) else "F",
            age=float(c["age"][0]),
            height_cm=float(c["height"][0]),
            weight_kg=float(c["weight"][0]),
            bone_status=status,
            density_right=status + float(side[0]),
            density_left=status + float(side[1]),
            t_score=t,
        )
        if osteoporotic is None or bool(subject.label) == osteoporotic:
            return subject
    raise RuntimeError("could not draw a subject with the requested label")  # pragma: no cover
