"""The use-case registry: one place says what each entity kind needs and provides, and everything reads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.settings import PROJECT_ROOT, get_settings
from pipelines.specs import SpecError, load_spec, load_specs
from pipelines.training.dataset import entity_keys
from pipelines.usecases import (
    FAMILIES,
    USE_CASES,
    UnknownUseCase,
    families_for,
    input_tables,
    raw_tables,
    use_case,
)

SHIPPED = load_specs(PROJECT_ROOT / "models")


def test_every_shipped_spec_has_its_use_case_and_the_tables_it_needs() -> None:
    assert {spec.entity for spec in SHIPPED.values()} == set(USE_CASES)
    assert input_tables(SHIPPED["purchase_intent"]) == ("events", "users", "follows")
    assert input_tables(SHIPPED["order_fraud"]) == ("orders", "order_labels")
    assert input_tables(SHIPPED["product_ranking"]) == ("events", "users", "follows")
    assert families_for(SHIPPED.values()) == ["user_behavior", "order_risk", "ranking"]
    assert families_for([SHIPPED["product_ranking"]]) == ["user_behavior", "ranking"]
    assert set(raw_tables()) == {"events", "users", "follows", "orders", "order_labels"}
    assert [entity_keys(spec) for spec in SHIPPED.values()] == [("order_id",), ("user_id", "product_id"), ("user_id",)]
    assert {e: c.serving for e, c in USE_CASES.items()} == {
        "user": "score",
        "order": "checkout",
        "user_product": "rank",
    }


def test_every_family_publishes_the_tables_its_feature_views_read(tmp_path: Path) -> None:
    """The Feast repo is composed from the use cases: each view reads a table some family publishes, and each
    use case declares the feature service its shipped spec names."""
    from feature_repo.definitions import parts_by_entity
    from feature_repo.parts import lake_table

    parts = parts_by_entity(get_settings(home=tmp_path / ".storefront"))
    published = {t for family in FAMILIES.values() for t in (*family.feature_tables, *family.serving_tables)}
    assert {lake_table(view) for part in parts.values() for view in part.views} == published
    for spec in SHIPPED.values():
        assert spec.feature_service in {s.name for s in parts[spec.entity].services}


def test_an_unknown_entity_is_refused_naming_the_key_and_the_known_ones(tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "models" / "purchase_intent.yaml").read_text())
    path = tmp_path / "purchase_intent.yaml"
    path.write_text(yaml.safe_dump(raw | {"entity": "merchant"}))
    with pytest.raises(SpecError, match=r"key 'entity': 'merchant' has no use case; use one of \['order', 'user'"):
        load_spec(path)
    with pytest.raises(UnknownUseCase, match="declare one in pipelines/usecases/"):
        use_case("merchant")


def test_validate_specs_refuses_a_feature_service_of_another_entity(tmp_path: Path) -> None:
    from pipelines.spec_check import check_specs

    models = tmp_path / "models"
    models.mkdir()
    raw = yaml.safe_load((PROJECT_ROOT / "models" / "purchase_intent.yaml").read_text())
    (models / "purchase_intent.yaml").write_text(yaml.safe_dump(raw | {"feature_service": "order_fraud"}))
    (check,) = check_specs(get_settings(home=tmp_path / ".storefront", models_dir=models))
    assert check.problems == [
        f"{models / 'purchase_intent.yaml'}: key 'feature_service': 'order_fraud' serves entity 'order', but the "
        "spec's entity is 'user'; name a service of the 'user' use case (['purchase_intent'])"
    ]


def test_the_registry_and_the_daily_plan_import_without_heavy_libraries() -> None:
    """The daily DAG file reads them at parse time: no pandas, Feast, MLflow, GX or LightGBM."""
    code = (
        "import sys; import pipelines.usecases, pipelines.flows.daily_plan; "
        "print(sorted(m for m in ('pandas', 'feast', 'mlflow', 'great_expectations', 'lightgbm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert out.stdout.strip() == "[]"
