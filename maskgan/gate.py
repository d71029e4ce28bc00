"""The promotion gate as pure functions: the evaluation report contract, GateConfig, decide().

No MLflow here (maskgan.registry does the registry I/O), so evaluation can import the report
contract and the decision is unit-tested on plain dicts.

Report contract (a JSON object; evaluation writes it, the registry stores it with the version):
    {"status": "ok" | "failed",
     "metrics": {name: float | null},   # null (or the string "unavailable") = not computed, e.g. FID
                                        # without configured weights; never an invented number
     "split": "val" | "test" | ...,     # required when status is "ok"; compared reports must match
     "error": "...",                    # why, when status is "failed"
     ...}                               # anything else (model, source, manifest_sha256, created_at) is kept
A report that carries "manifest_sha256" is only compared with a champion report of the same dataset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "failed")
UNAVAILABLE = "unavailable"
DIRECTIONS = ("max", "min")
PROMOTED, KEPT, FAILED, UNCHANGED = "promoted", "kept", "failed", "unchanged"


class ReportError(ValueError):
    """An evaluation report that does not follow the contract; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class Report:
    """A validated evaluation report; metrics hold floats, or None for "unavailable"."""

    status: str
    metrics: Mapping[str, float | None]
    split: str | None
    error: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (unavailable metrics as null); parse_report(to_dict()) == self."""
        out = dict(self.extra)
        out |= {"status": self.status, "metrics": dict(self.metrics), "split": self.split}
        if self.error is not None:
            out["error"] = self.error
        return out


def parse_report(data: Any) -> Report:
    """Validate a decoded JSON report; ReportError names the first field that breaks the contract."""
    if not isinstance(data, Mapping):
        raise ReportError(f"an evaluation report must be a JSON object, got {type(data).__name__}")
    status = data.get("status")
    if status not in STATUSES:
        raise ReportError(f"report status must be one of {STATUSES}, got {status!r}")
    raw_metrics = data.get("metrics", {} if status == "failed" else None)
    if not isinstance(raw_metrics, Mapping):
        raise ReportError(f"report metrics must be an object {{name: number | null}}, got {raw_metrics!r}")
    metrics = {}
    for name, value in raw_metrics.items():
        if not isinstance(name, str) or not name:
            raise ReportError(f"report metric names must be non-empty strings, got {name!r}")
        metrics[name] = _metric_value(name, value)
    split = data.get("split")
    if split is not None and (not isinstance(split, str) or not split):
        raise ReportError(f"report split must be a non-empty string such as 'val', got {split!r}")
    if status == "ok" and split is None:
        raise ReportError("report split is required when status is 'ok' (which split was evaluated?)")
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise ReportError(f"report error must be a string, got {type(error).__name__}")
    extra = {k: v for k, v in data.items() if k not in ("status", "metrics", "split", "error")}
    return Report(status=status, metrics=metrics, split=split, error=error, extra=extra)


def _metric_value(name: str, value: Any) -> float | None:
    if value is None or value == UNAVAILABLE:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"report metric {name!r} must be a number, null or {UNAVAILABLE!r}, got {value!r}")
    if not math.isfinite(value):
        raise ReportError(
            f"report metric {name!r} is {value}; write null ({UNAVAILABLE}) when it could not be computed"
        )
    return float(value)


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """When a challenger replaces the champion.

    The challenger wins when its primary metric beats the champion's by more than `margin` (absolute,
    in the metric's units; a tie keeps the champion) in `direction`, and every `floors` metric is
    >= its value and every `ceilings` metric <= its value (an unavailable metric fails its bound).
    """

    primary_metric: str = "edit/miou"
    direction: str = "max"
    margin: float = 0.0
    floors: Mapping[str, float] = field(default_factory=dict)
    ceilings: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.primary_metric, str) or not self.primary_metric:
            raise ValueError(f"gate.primary_metric must be a metric name, got {self.primary_metric!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"gate.direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int | float):
            raise ValueError(f"gate.margin must be a number, got {self.margin!r}")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"gate.margin must be finite and >= 0, got {self.margin}")
        for kind in ("floors", "ceilings"):
            bounds = getattr(self, kind)
            if not isinstance(bounds, Mapping):
                raise ValueError(f"gate.{kind} must map metric names to numbers, got {bounds!r}")
            for name, value in bounds.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"gate.{kind} metric names must be non-empty strings, got {name!r}")
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise ValueError(f"gate.{kind}[{name!r}] must be a finite number, got {value!r}")
            object.__setattr__(self, kind, {k: float(v) for k, v in bounds.items()})  # a private copy
        for name in set(self.floors) & set(self.ceilings):
            if self.floors[name] > self.ceilings[name]:
                raise ValueError(
                    f"gate.floors[{name!r}] = {self.floors[name]} is above gate.ceilings[{name!r}] = "
                    f"{self.ceilings[name]}: no value could pass"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line: 'edit/miou max, margin 0.01; floors recon/ssim>=0.5'."""
        text = f"{self.primary_metric} {self.direction}, margin {self.margin:g}"
        bounds = [f"{k}>={v:g}" for k, v in sorted(self.floors.items())]
        bounds += [f"{k}<={v:g}" for k, v in sorted(self.ceilings.items())]
        return text + (f"; bounds {', '.join(bounds)}" if bounds else "")


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """What the gate decided: outcome is promoted | kept | failed; reason says why in one sentence."""

    outcome: str
    reason: str

    @property
    def promote(self) -> bool:
        return self.outcome == PROMOTED


def decide(
    config: GateConfig,
    challenger: Mapping[str, Any] | Report | None,
    champion: Mapping[str, Any] | Report | None,
    *,
    has_champion: bool,
) -> Verdict:
    """Gate a challenger report against the champion's (None: no report stored / no champion).

    failed: the challenger's evaluation is missing, invalid, failed, or lacks the primary metric;
    kept: it fails a bound, or does not beat the champion, or the champion's report cannot be compared;
    promoted: it passes the bounds and beats the champion by more than the margin, or no champion exists.
    """
    metric = config.primary_metric
    if challenger is None:
        return Verdict(outcome=FAILED, reason="no evaluation report: run the evaluation and pass its report")
    try:
        report = challenger if isinstance(challenger, Report) else parse_report(challenger)
    except ReportError as error:
        return Verdict(outcome=FAILED, reason=f"the evaluation report is invalid: {error}")
    if report.status != "ok":
        return Verdict(outcome=FAILED, reason=f"the evaluation failed: {report.error or 'no error given'}")
    if metric not in report.metrics:
        names = ", ".join(sorted(report.metrics)) or "none"
        return Verdict(
            outcome=FAILED, reason=f"the report has no primary metric {metric!r} (it has: {names})"
        )
    value = report.metrics[metric]
    if value is None:
        return Verdict(outcome=FAILED, reason=f"primary metric {metric!r} is {UNAVAILABLE} in the report")
    broken = _broken_bounds(config, report)
    if broken:
        return Verdict(outcome=KEPT, reason=f"the challenger fails the gate's bounds: {'; '.join(broken)}")
    if not has_champion:
        return Verdict(outcome=PROMOTED, reason=f"no champion yet; {metric} = {value:g} passes the bounds")
    best, incomparable = _champion_value(config, report, champion)
    if best is None:
        return Verdict(outcome=KEPT, reason=f"cannot compare with the champion: {incomparable}")
    if config.direction == "max":
        wins, sign, relation = value > best + config.margin, "+", ">"
    else:
        wins, sign, relation = value < best - config.margin, "-", "<"
    comparison = (
        f"{metric} {value:g} vs champion {best:g} (needs {relation} champion {sign} {config.margin:g})"
    )
    if wins:
        return Verdict(outcome=PROMOTED, reason=f"the challenger wins: {comparison}")
    return Verdict(outcome=KEPT, reason=f"the challenger does not beat the champion: {comparison}")


def _broken_bounds(config: GateConfig, report: Report) -> list[str]:
    broken = []
    for kind, bounds, passes, relation in (
        ("floor", config.floors, lambda v, b: v >= b, ">="),
        ("ceiling", config.ceilings, lambda v, b: v <= b, "<="),
    ):
        for name, bound in sorted(bounds.items()):
            if name not in report.metrics:
                broken.append(f"{name} missing from the report ({kind} {relation} {bound:g})")
            elif report.metrics[name] is None:
                broken.append(f"{name} is {UNAVAILABLE} ({kind} {relation} {bound:g} needs a number)")
            elif not passes(report.metrics[name], bound):
                broken.append(f"{name} = {report.metrics[name]:g}, {kind} {relation} {bound:g}")
    return broken


def _champion_value(
    config: GateConfig, report: Report, champion: Mapping[str, Any] | Report | None
) -> tuple[float | None, str]:
    """(the champion's primary metric, '') when it compares with the challenger, else (None, why not)."""
    if champion is None:
        return None, "the champion has no stored evaluation report"
    try:
        champion = champion if isinstance(champion, Report) else parse_report(champion)
    except ReportError as error:
        return None, f"the champion's stored report is invalid ({error})"
    if champion.status != "ok":
        return None, "the champion's stored report is a failed evaluation"
    if champion.split != report.split:
        return None, f"the champion was evaluated on {champion.split!r}, the challenger on {report.split!r}"
    mine, theirs = report.extra.get("manifest_sha256"), champion.extra.get("manifest_sha256")
    if mine and theirs and mine != theirs:
        return None, f"the reports come from other datasets (manifest {str(theirs)[:12]} vs {str(mine)[:12]})"
    value = champion.metrics.get(config.primary_metric)
    if value is None:
        return None, f"the champion's report has no value for {config.primary_metric!r}"
    return value, ""
