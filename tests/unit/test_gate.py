"""The promotion gate's decision on plain report dicts (no MLflow): maskgan.gate."""

from __future__ import annotations

import json

import pytest

from maskgan.gate import FAILED, KEPT, PROMOTED, GateConfig, ReportError, decide, parse_report


def report(status="ok", split="val", **metrics) -> dict:
    names = {key.replace("__", "/"): value for key, value in metrics.items()}  # edit__miou -> edit/miou
    return {"status": status, "split": split, "metrics": names}


GATE = GateConfig(primary_metric="edit/miou", direction="max", margin=0.01)


def test_first_version_is_promoted_without_a_champion():
    verdict = decide(GATE, report(edit__miou=0.3), None, has_champion=False)
    assert verdict.outcome == PROMOTED and verdict.promote
    assert "no champion" in verdict.reason


@pytest.mark.parametrize(
    ("challenger", "outcome"),
    [(0.62, PROMOTED), (0.605, KEPT), (0.61, KEPT), (0.5, KEPT)],  # the margin is strict: 0.61 ties
)
def test_max_direction_needs_more_than_the_margin(challenger, outcome):
    verdict = decide(GATE, report(edit__miou=challenger), report(edit__miou=0.6), has_champion=True)
    assert verdict.outcome == outcome, verdict.reason
    assert "edit/miou" in verdict.reason and "0.6" in verdict.reason


def test_min_direction_prefers_lower_values():
    gate = GateConfig(primary_metric="recon/l1", direction="min", margin=0.0)
    champion = report(recon__l1=0.2)
    assert decide(gate, report(recon__l1=0.1), champion, has_champion=True).outcome == PROMOTED
    assert decide(gate, report(recon__l1=0.3), champion, has_champion=True).outcome == KEPT
    assert decide(gate, report(recon__l1=0.2), champion, has_champion=True).outcome == KEPT  # a tie keeps


@pytest.mark.parametrize(
    ("challenger", "reason"),
    [
        (None, "no evaluation report"),
        ({"status": "failed", "error": "CUDA out of memory"}, "evaluation failed: CUDA out of memory"),
        ({"status": "maybe", "metrics": {}}, "status must be one of"),
        (report(edit__miou=float("nan")), "is nan; write null"),
        (report(edit__miou=True), "must be a number"),
        ({"status": "ok", "metrics": {"edit/miou": 0.9}}, "split is required"),
        ([0.9], "must be a JSON object"),
        (report(recon__ssim=0.9), "no primary metric 'edit/miou' (it has: recon/ssim)"),
        (report(edit__miou=None), "'edit/miou' is unavailable"),
        (report(edit__miou="unavailable"), "'edit/miou' is unavailable"),
    ],
)
def test_a_missing_failed_or_invalid_evaluation_never_promotes(challenger, reason):
    for has_champion in (False, True):  # not even the first version
        champion = report(edit__miou=0.0) if has_champion else None
        verdict = decide(GATE, challenger, champion, has_champion=has_champion)
        assert verdict.outcome == FAILED and not verdict.promote
        assert reason in verdict.reason


def test_floors_and_ceilings_block_a_better_challenger():
    gate = GateConfig(
        primary_metric="edit/miou", floors={"recon/ssim": 0.5}, ceilings={"edit/outside_l1": 0.1}
    )
    champion = report(edit__miou=0.1, recon__ssim=0.9, edit__outside_l1=0.0)
    good = report(edit__miou=0.9, recon__ssim=0.5, edit__outside_l1=0.1)  # bounds are inclusive
    assert decide(gate, good, champion, has_champion=True).outcome == PROMOTED
    low = decide(
        gate, {**good, "metrics": {**good["metrics"], "recon/ssim": 0.49}}, champion, has_champion=True
    )
    assert low.outcome == KEPT and "recon/ssim = 0.49, floor >= 0.5" in low.reason
    high = decide(
        gate, {**good, "metrics": {**good["metrics"], "edit/outside_l1": 0.2}}, None, has_champion=False
    )
    assert high.outcome == KEPT and "edit/outside_l1 = 0.2, ceiling <= 0.1" in high.reason
    # An unavailable or missing bounded metric cannot pass its bound.
    unavailable = report(edit__miou=0.9, recon__ssim=None)
    verdict = decide(gate, unavailable, None, has_champion=False)
    assert verdict.outcome == KEPT
    assert "recon/ssim is unavailable" in verdict.reason and "edit/outside_l1 missing" in verdict.reason


@pytest.mark.parametrize(
    ("champion", "reason"),
    [
        (None, "champion has no stored evaluation report"),
        (report(split="test", edit__miou=0.1), "evaluated on 'test', the challenger on 'val'"),
        (report(edit__miou=None), "champion's report has no value for 'edit/miou'"),
        ({"status": "failed", "error": "x"}, "stored report is a failed evaluation"),
        ("{not json", "stored report is invalid"),
    ],
)
def test_an_incomparable_champion_is_kept(champion, reason):
    verdict = decide(GATE, report(edit__miou=0.9), champion, has_champion=True)
    assert verdict.outcome == KEPT and reason in verdict.reason


def test_reports_of_other_datasets_are_not_compared():
    mine = {**report(edit__miou=0.9), "manifest_sha256": "a" * 64}
    assert decide(
        GATE, mine, {**report(edit__miou=0.1), "manifest_sha256": "a" * 64}, has_champion=True
    ).promote
    other = decide(GATE, mine, {**report(edit__miou=0.1), "manifest_sha256": "b" * 64}, has_champion=True)
    assert other.outcome == KEPT and "other datasets" in other.reason


def test_parse_report_round_trips_and_keeps_extra_fields():
    data = {**report(fid="unavailable", edit__miou=1), "model": "maskgan-dmn", "created_at": "2026-11-27"}
    parsed = parse_report(json.loads(json.dumps(data)))
    assert parsed.metrics == {"fid": None, "edit/miou": 1.0}
    assert parsed.extra == {"model": "maskgan-dmn", "created_at": "2026-11-27"}
    assert parse_report(parsed.to_dict()) == parsed
    assert parse_report({"status": "failed"}).metrics == {}  # a failed run may have no metrics
    with pytest.raises(ReportError, match="metrics must be an object"):
        parse_report({"status": "ok", "split": "val", "metrics": [1]})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "up"}, "gate.direction must be one of"),
        ({"margin": -0.1}, "gate.margin must be finite and >= 0"),
        ({"margin": float("inf")}, "gate.margin must be finite"),
        ({"primary_metric": ""}, "gate.primary_metric"),
        ({"floors": {"a": float("nan")}}, r"gate.floors\['a'\] must be a finite number"),
        ({"ceilings": {"": 1.0}}, "gate.ceilings metric names"),
        ({"floors": {"a": 2.0}, "ceilings": {"a": 1.0}}, "no value could pass"),
    ],
)
def test_gate_config_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GateConfig(**kwargs)


def test_gate_config_copies_its_bounds():
    floors = {"recon/ssim": 0.5}
    gate = GateConfig(floors=floors)
    floors["recon/ssim"] = 0.99  # the caller's dict changing later does not change the frozen config
    assert gate.floors == {"recon/ssim": 0.5}
    assert gate.describe() == "edit/miou max, margin 0; bounds recon/ssim>=0.5"


def test_default_rule_per_model():
    from maskgan.registry import MODEL_NAMES, default_gate

    assert default_gate("maskgan-parser") == GateConfig(
        primary_metric="parser/miou", direction="max", margin=0.0
    )
    assert {default_gate(name).primary_metric for name in MODEL_NAMES} == {
        "maskvae/miou",
        "edit/miou",
        "parser/miou",
    }
    assert all(not default_gate(name).floors and not default_gate(name).ceilings for name in MODEL_NAMES)
    with pytest.raises(ValueError, match="'maskgan-gan' is not one of maskgan-maskvae"):
        default_gate("maskgan-gan")
