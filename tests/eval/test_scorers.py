"""The rubric scorer on the demo's own rubric, and the similarity scorer on real embeddings."""

from pathlib import Path

import pytest

from tunelab.eval.scorers import RubricScorer, SimilarityScorer

RUBRIC = Path(__file__).resolve().parents[2] / "tunelab" / "examples" / "support" / "rubric.yaml"
GOOD = ("Hi there,\n\nI'm sorry the lamp arrived cracked. Could you reply with your order number (it starts with "
        "BL-) and a photo? A replacement ships within 2 business days.\n\n— Robin, Brightlane Support")


@pytest.fixture(scope="module")
def rubric():
    return RubricScorer.from_yaml(RUBRIC)


def prompt(text):
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]


def test_a_house_style_reply_scores_100(rubric):
    result = rubric.score(prompt("My lamp arrived and the package was crushed."), GOOD)
    assert result.score == 100
    assert set(result.checks) == {"greeting", "sign_off", "brief", "timeframe", "no_exclamation",
                                  "no_unfortunately"}


def test_each_rule_can_fail(rubric):
    bad = "Unfortunately we can't help! It will be fixed soon. One. Two. Three. Four."
    result = rubric.score(prompt("Where is my package?"), bad)
    assert not any(result.checks.values())
    assert result.score == 0


def test_order_number_must_be_quoted_once_the_customer_gave_it(rubric):
    asked = prompt("My order BL-123456 has not arrived.")
    assert rubric.score(asked, GOOD).checks["quotes_order_number"] is False
    quoting = GOOD.replace("Could you reply with your order number (it starts with BL-) and a photo?",
                           "I've checked BL-123456.")
    assert rubric.score(asked, quoting).checks["quotes_order_number"] is True
    assert "quotes_order_number" not in rubric.score(prompt("How do I change my password?"), GOOD).checks


def test_rubric_file_errors_name_the_check(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("checks:\n  - id: x\n    regex: a\n    not_regex: b\n")
    with pytest.raises(ValueError, match=r"checks\[0\]"):
        RubricScorer.from_yaml(path)


def test_similarity_ranks_a_paraphrase_above_an_unrelated_reply():
    scorer = SimilarityScorer()
    reference = "Your refund will reach your card within 5 to 7 business days."
    close, far = scorer.score_many(["The refund should appear on your card in 5-7 business days.",
                                    "Our sofas come in three colours."], [reference, reference])
    assert close > 80 and far < 40
