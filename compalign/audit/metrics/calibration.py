"""`calibration`: expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural
Networks", eq. 3) of every model, and its change under compression."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from compalign.audit.base import AuditInputs, Column, Metric, number
from compalign.audit.stats import expected_calibration_error
from compalign.options import Options

NAN = float("nan")


class CalibrationOptions(Options):
    """Equal-width confidence bins of the expected calibration error."""

    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 15
    """bins of the expected calibration error"""


def calibration(inputs: AuditInputs, options: CalibrationOptions) -> dict[str, float]:
    """`ece`; compared: `ece_reference`, `ece_change`."""
    frame = inputs.frame
    ece = expected_calibration_error(
        frame["confidence"].to_numpy(),
        (frame.prediction == frame.label).to_numpy(),
        options.calibration_bins,
    )
    if not inputs.compared:
        return {"ece": ece}
    reference = inputs.reference.metrics["ece"]
    return {"ece": ece, "ece_reference": reference, "ece_change": ece - reference}


ENTRY = Metric(
    calibration,
    CalibrationOptions,
    summary=lambda metrics, labels: {"ece": metrics.get("ece", NAN)},
    columns=(Column("ECE", lambda row: number(row.ece, 3)),),
)
