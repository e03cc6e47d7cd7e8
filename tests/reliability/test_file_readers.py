"""Every reader of a user's file, fed what hypothesis makes up: arbitrary bytes, arbitrary YAML and JSON
documents, and near-valid documents with every field bent. The property, for rubrics, training configs,
`advise` answers, JSON Schemas for `eval --schema`, and eval data: the reader returns something usable
(a rubric that then scores a reply without failing) or raises ValueError or OSError naming the file —
never any other exception, which the command line would show as a bug. (Chat data's own properties are in
tests/data/test_properties.py; the commands themselves in tests/test_hostile_inputs.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.reliability
PROPERTIES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
values = st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                      | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=12)


def yaml_text(document) -> str:
    return yaml.safe_dump(document, allow_unicode=True)


def documents(fields: dict) -> st.SearchStrategy:
    """Mappings with the reader's own keys (each given any value, or a plausible one) plus stray keys."""
    return st.fixed_dictionaries({}, optional={key: plausible | values for key, plausible in fields.items()}) \
        .flatmap(lambda known: st.dictionaries(st.text(max_size=6), values, max_size=2).map(lambda extra: {**extra, **known}))


contents = st.one_of(
    st.binary(max_size=200).map(lambda raw: ("bytes", raw)),
    values.map(lambda value: ("yaml", yaml_text(value).encode())),
    st.text(max_size=200).map(lambda text: ("text", text.encode("utf-8", "surrogatepass"))),
)


def write(tmp_path: Path, name: str, raw: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def read_or_refuse(reader, path: Path):
    """The reader's result, or None when it refused the file in the promised way."""
    try:
        return reader(path)
    except (ValueError, OSError) as error:
        assert str(path) in str(error) or path.name in str(error), f"the error does not name the file: {error}"
        return None


RUBRIC_CHECK = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=6) | values},
    optional={"regex": st.sampled_from(["Hi", "(", "^x$"]) | values, "starts_with": st.just("Hi") | values,
              "ends_with": st.just("Robin") | values, "max_sentences": st.integers(-2, 6) | values,
              "not_regex": st.just("!") | values, "quotes_from_prompt": st.just(r"BL-\d+") | values,
              "when_prompt_matches": st.just("order") | values, "strip": st.just([r"BL-\d+"]) | values,
              "description": values})


@PROPERTIES
@given(content=contents | documents({"name": st.text(max_size=8), "checks": st.lists(RUBRIC_CHECK, max_size=3)})
       .map(lambda document: ("yaml", yaml_text(document).encode())))
def test_a_rubric_is_read_and_scores_or_is_refused_naming_the_file(tmp_path, content):
    from tunelab.eval.rubric import RubricScorer

    rubric = read_or_refuse(RubricScorer.from_yaml, write(tmp_path, "rubric.yaml", content[1]))
    if rubric is not None:
        score = rubric.score([{"role": "user", "content": "Where is order BL-123456?"}], "Hi there. — Robin")
        assert 0 <= score.score <= 1


@PROPERTIES
@given(content=contents | documents({"n_epochs": st.integers(-1, 5), "learning_rate_multiplier": st.floats(-1, 5),
                                     "method": st.sampled_from(["lora", "qlora", "dpo"]), "data": st.text(max_size=5),
                                     "dtype": st.sampled_from(["bf16", "fp8"]), "lora_r": st.integers(-1, 64)})
       .map(lambda document: ("yaml", yaml_text(document).encode())))
def test_a_training_config_is_read_or_refused_naming_the_file(tmp_path, content):
    from tunelab.core.settings import TrainConfig

    read_or_refuse(lambda path: TrainConfig.from_sources(path), write(tmp_path, "config.yaml", content[1]))


@PROPERTIES
@given(content=contents | documents({key: st.sampled_from(["yes", "no", "unknown", True, None, "maybe"])
                                     for key in ("tried_best_model", "optimized_prompt", "rag_would_solve",
                                                 "high_volume_narrow", "goal")})
       .map(lambda document: ("yaml", yaml_text(document).encode())))
def test_advise_answers_are_read_or_refused_naming_the_file(tmp_path, content):
    from tunelab.advise.decide import read_answers

    read_or_refuse(lambda path: read_answers(str(path)), write(tmp_path, "answers.yaml", content[1]))


@PROPERTIES
@given(content=contents | documents({"type": st.sampled_from(["object", "string", "nope"]),
                                     "properties": st.dictionaries(st.text(max_size=4), values, max_size=2),
                                     "required": st.lists(st.text(max_size=4), max_size=2)})
       .map(lambda document: ("json", json.dumps(document).encode())))
def test_a_json_schema_is_read_or_refused_naming_the_file(tmp_path, content):
    from tunelab.eval.scorers import JsonSchema

    schema = read_or_refuse(JsonSchema.from_file, write(tmp_path, "schema.json", content[1]))
    if schema is not None:
        assert schema is not None


@PROPERTIES
@given(name=st.text(max_size=30) | st.sampled_from(["default", "../../../etc/passwd", "/etc/hostname", "..", ""]))
def test_a_preset_name_finds_a_preset_or_is_refused_never_another_file(name):
    from tunelab.core.presets import PRESET_DIR, preset_path

    try:
        path = preset_path(name)
    except ValueError as error:
        assert "no preset named" in str(error)
        return
    assert path.resolve().parent == PRESET_DIR and path.suffix == ".yaml"
