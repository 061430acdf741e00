"""Model specs: the shipped ones load; a malformed one fails naming the file, the key and the expected form."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.specs import SpecError, load_spec, load_specs

SHIPPED = PROJECT_ROOT / "models"


def _base() -> dict:
    return yaml.safe_load((SHIPPED / "purchase_intent.yaml").read_text())


def _write(tmp_path: Path, spec: dict, name: str = "purchase_intent") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_every_shipped_spec_loads_and_names_its_reviewers() -> None:
    specs = load_specs(SHIPPED)
    assert "purchase_intent" in specs
    for spec in specs.values():
        assert spec.reviewers and spec.main_metric in spec.metrics


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"objective": "multiclass"}, r"key 'objective': Input should be 'binary' or 'lambdarank'"),
        ({"windows": {"train_days": 0}}, r"key 'windows.train_days': Input should be greater than 0"),
        ({"metrics": ["roc_auc", "accuracy"]}, r"metric\(s\) \['accuracy'\] are not binary metrics"),
        ({"main_metric": "pr_auc", "metrics": ["roc_auc"]}, r"main_metric 'pr_auc' must be one of 'metrics'"),
        ({"colour": "blue"}, r"key 'colour': Extra inputs are not permitted"),
        ({"reviewers": []}, r"key 'reviewers': List should have at least 1 item"),
        ({"slices": [{"name": "p", "column": "x", "bands": [5, 1]}]}, r"'bands' must be a non-empty strictly"),
        ({"slices": [{"name": "p", "column": "x", "bands": [1], "labels": ["a"]}]}, r"'labels' needs 2 names"),
        (
            {"objective": "lambdarank", "metrics": ["ndcg_at_10"], "main_metric": "ndcg_at_10", "gate": {}},
            r"'lambdarank' goes with label kind 'ranking_relevance'",
        ),
        (
            {"objective": "lambdarank"},
            r"metric\(s\) \['calibration_error', 'log_loss', 'pr_auc', 'roc_auc'\] are not lambdarank",
        ),
        ({"label": {"kind": "chargeback", "delay_days": 14}}, r"'chargeback' needs entity 'order'"),
        ({"gate": {"floors": {"roc_auc": "high"}}}, r"key 'gate.floors.roc_auc': Input should be a valid number"),
    ],
)
def test_a_malformed_spec_names_the_file_the_key_and_the_expected_form(
    tmp_path: Path, change: dict, expected: str
) -> None:
    path = _write(tmp_path, _base() | change)
    with pytest.raises(SpecError, match=expected) as err:
        load_spec(path)
    assert str(err.value).startswith(str(path))


def test_a_missing_key_and_a_wrong_name_are_named(tmp_path: Path) -> None:
    spec = _base()
    del spec["feature_service"]
    with pytest.raises(SpecError, match=r"key 'feature_service': Field required"):
        load_spec(_write(tmp_path, spec))
    with pytest.raises(SpecError, match=r"key 'name' is 'purchase_intent' but must match the file name 'other'"):
        load_spec(_write(tmp_path, _base(), name="other"))
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML"):
        load_spec(tmp_path / "broken.yaml")


def _settings(tmp_path: Path, models: Path) -> Settings:
    return get_settings(home=tmp_path / ".storefront", models_dir=models)


def test_validate_specs_passes_on_the_shipped_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREFRONT_HOME", str(tmp_path / ".storefront"))
    result = CliRunner().invoke(app, ["validate-specs"])
    assert result.exit_code == 0, result.output
    for path in SHIPPED.glob("*.yaml"):
        assert f"ok     {path.name}" in result.output


def test_validate_specs_reports_every_bad_file_and_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _write(models, _base())
    _write(models, _base() | {"name": "typo", "windows": {"train_days": "two weeks"}}, name="typo")
    _write(models, _base() | {"name": "ghost", "feature_service": "ghost", "reviewers": ["mallory"]}, name="ghost")
    monkeypatch.setenv("STOREFRONT_HOME", str(tmp_path / ".storefront"))
    monkeypatch.setenv("STOREFRONT_MODELS_DIR", str(models))
    result = CliRunner().invoke(app, ["validate-specs"], terminal_width=400)
    assert result.exit_code == 1
    assert "ok     purchase_intent.yaml" in result.output
    assert "typo.yaml: key 'windows.train_days': Input should be a valid integer" in result.output
    assert "key 'feature_service': 'ghost' is not declared in feature_repo/" in result.output
    assert "key 'reviewers': ['mallory'] have no Airflow login" in result.output
