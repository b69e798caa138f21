"""Zero-shot NLU benchmarks scored the lm-evaluation-harness way, from local files.

Every task is data plus a scoring rule (a registry like lm-evaluation-harness's task configs):

* ``multiple_choice`` (PIQA, ARC, COPA, HellaSwag, BoolQ, MathQA, PubMedQA): the model scores
  each choice as a continuation of one context; ``acc`` takes the choice with the highest summed
  token log-probability, ``acc_norm`` the highest log-probability per character of the choice.
* ``partial`` (WinoGrande): each option is a different context followed by the same
  continuation; the option whose context makes the continuation most likely wins.
* ``greedy`` (LAMBADA): ``acc`` is 1 when every target token is the model's argmax given the
  preceding text (the greedy continuation equals the target), and ``perplexity`` is
  ``exp(-mean over documents of log p(target))``, as lm-eval reports it.

What is scored is lm-eval's request exactly (EleutherAI/lm-evaluation-harness,
lm_eval/api/task.py ``construct_requests`` and ``process_results``): an instance's choices are
lm-eval's ``doc_to_choice`` output (WinoGrande's and LAMBADA's: ``doc_to_target`` without its
leading space), the continuation is always ``target_delimiter`` (" ") + choice, even when the
choice already begins with a space (COPA's do: its continuations begin with two spaces), and
``acc_norm`` divides by ``len(choice)``, lm-eval's ``completion_len``.

Headline metric per task: acc_norm where the task's lm-eval config reports one (piqa, arc_easy,
arc_challenge, hellaswag; not mathqa, whose options are single letters here), acc for the others. Two averages over NLU_AVG6_TASKS (PIQA, ARC-C,
COPA, WinoGrande, PubMedQA, HellaSwag), named by protocol: ``avg6_lm_eval`` (headline metrics)
and ``avg6_summed_acc`` (plain acc, the UNDIAL paper's scoring); see :func:`nlu_averages`.

Every accuracy carries a 95 % percentile bootstrap interval (``acc_ci95``, ``acc_norm_ci95``;
the averages' ``ci95`` resamples items within each task) beside lm-eval's stderr, and
:func:`measure_nlu` returns the per-item 0/1 values behind each, in instance order, for paired
comparisons between models (:mod:`unmemorize.metrics.uncertainty`).

Tokenisation: trailing whitespace of a context moves to the start of its continuation (as in
lm-eval), then context and continuation are encoded separately and their ids concatenated, so
the continuation's tokens are exactly its own text. The context gets whatever prefix the
tokenizer adds (BOS for Gemma/Llama); a tokenizer that adds none (GPT-2/GPT-Neo) gets nothing,
except that an empty context is replaced by the EOS token, as lm-eval does. lm-eval instead
encodes context+continuation in one go and splits at the context's length; the two agree
whenever no merge crosses the boundary, which the continuation's leading space ensures (on
Gemma-3 they agreed on all of 2,900 PIQA/ARC/COPA/WinoGrande/LAMBADA pairs checked).
"""

from __future__ import annotations

import bz2
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unmemorize.errors import UserError
from unmemorize.metrics.decoding import (
    ModelParts,
    PrefixState,
    at_least_float32,
    cache_from_states,
    evaluating,
    forward_hidden,
    model_device,
    right_padded,
    split_model,
)
from unmemorize.metrics.uncertainty import Measurement, bootstrap_interval
from unmemorize.paths import data_path

ProgressCallback = Callable[[str, int, int], None]

# lm-eval's ``target_delimiter``: put before every choice, whatever the context or the choice
# already brings (lm_eval/api/task.py construct_requests).
TARGET_DELIMITER = " "
# Seed of the fixed subset taken by ``limit``, so runs with the same limit see the same items.
SUBSET_SEED = 1234

MULTIPLE_CHOICE = "multiple_choice"
PARTIAL = "partial"
GREEDY = "greedy"


@dataclass(frozen=True)
class Instance:
    """One benchmark item.

    Option ``i`` is ``contexts[i]`` (or the only context) followed by ``choices[i]`` (or the only
    choice): multiple choice has one context and several choices, WinoGrande several contexts
    and one choice, LAMBADA one of each. ``gold`` is the index of the correct option. A choice is
    lm-eval's ``doc_to_choice`` text (``doc_to_target`` for WinoGrande and LAMBADA, without the
    delimiter); :func:`option_requests` turns options into the strings that are scored.
    """

    contexts: tuple[str, ...]
    choices: tuple[str, ...]
    gold: int = 0

    @property
    def n_options(self) -> int:
        return max(len(self.contexts), len(self.choices))

    def option(self, index: int) -> tuple[str, str]:
        context = self.contexts[index if len(self.contexts) > 1 else 0]
        choice = self.choices[index if len(self.choices) > 1 else 0]
        return context, choice


@dataclass(frozen=True)
class NLUTask:
    """A benchmark: where its file is, how to read it, how to score it."""

    name: str
    filename: str  # under the nlu/ data directory
    load: Callable[[Path], list[Instance]]
    scoring: str  # MULTIPLE_CHOICE | PARTIAL | GREEDY
    headline: str  # "acc" or "acc_norm": the number that goes into avg6_lm_eval
    description: str = ""
    note: str = ""  # reported with the task's result: where it departs from lm-eval's task


@dataclass(frozen=True)
class ContinuationScore:
    """Log-likelihood of a continuation given its context."""

    logprob: float  # sum of the continuation tokens' log-probabilities
    is_greedy: bool  # every continuation token is the argmax at its position
    n_tokens: int


# --------------------------------------------------------------------------------------------
# Loaders. The jsonl files come from mosaicml/llm-foundry's local eval data; their prompts are
# reshaped to lm-evaluation-harness's where the two differ.
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise UserError(f"{path}:{line_number}: expected a JSON object")
            yield line_number, row


def _field(row: dict[str, Any], key: str, path: Path, line_number: int) -> Any:
    if key not in row:
        raise UserError(f"{path}:{line_number}: missing field {key!r} (has {sorted(row)})")
    return row[key]


def _checked(instance: Instance, path: Path, where: int) -> Instance:
    if instance.n_options < 1 or not 0 <= instance.gold < instance.n_options:
        raise UserError(f"{path}:{where}: gold index {instance.gold} outside 0..{instance.n_options - 1}")
    return instance


def _query_choices_loader(
    make_context: Callable[[str], str], make_choice: Callable[[str], str] = str
) -> Callable[[Path], list[Instance]]:
    """Loader for llm-foundry's ``{query, choices, gold}`` rows; ``make_context`` turns the
    file's query into lm-eval's ``doc_to_text`` (ValueError when it cannot) and ``make_choice``
    a file choice into lm-eval's ``doc_to_choice`` text."""

    def load(path: Path) -> list[Instance]:
        instances = []
        for line_number, row in _read_jsonl(path):
            query = str(_field(row, "query", path, line_number))
            choices = tuple(make_choice(str(c)) for c in _field(row, "choices", path, line_number))
            gold = int(_field(row, "gold", path, line_number))
            try:
                context = make_context(query)
            except ValueError as exc:
                raise UserError(f"{path}:{line_number}: {exc}") from exc
            instances.append(_checked(Instance((context,), choices, gold), path, line_number))
        return instances

    return load


def _piqa_context(query: str) -> str:
    # File: "Question: {goal}\n"; lm-eval: "Question: {goal}\nAnswer:".
    return query.removesuffix("\n") + "\nAnswer:"


def _arc_context(query: str) -> str:
    # File: "Question: {question}"; lm-eval: "Question: {question}\nAnswer:".
    return query + "\nAnswer:"


COPA_CONNECTIVES = ("because", "therefore")


def copa_context(query: str) -> str:
    """lm-eval's COPA prompt (lm_eval/tasks/super_glue/copa/utils.py ``doc_to_text``: the premise
    without its final full stop, a space, "because"/"therefore") from llm-foundry's, which has a
    comma before the connective: "The man turned on the faucet, therefore". With
    :func:`copa_choice`, all 100 local items give lm-eval's prompt and choices exactly (checked
    once against SuperGLUE's COPA val.jsonl)."""
    for connective in COPA_CONNECTIVES:
        if query.endswith(f", {connective}"):
            return query[: -len(connective) - 2] + f" {connective}"
    raise ValueError(f"COPA query {query!r} does not end in ', because' or ', therefore'")


def copa_choice(choice: str) -> str:
    """lm-eval's ``doc_to_choice`` text: " " + the choice with its first letter lower-cased
    (the file's choices are lower-cased already; lm-eval's ``convert_choice`` is idempotent)."""
    return " " + choice[:1].lower() + choice[1:]


def _boolq_context(query: str) -> str:
    # File: "Passage: {passage}\nQuestion: {question}?"; lm-eval (super_glue boolq):
    # "{passage}\nQuestion: {question}?\nAnswer:" with choices " no"/" yes" (the file's order).
    return query.removeprefix("Passage: ") + "\nAnswer:"


def _mathqa_context(query: str) -> str:
    # llm-foundry's prompt is kept: the question, four lettered options and "Answer:", scored
    # over " A".." D" (its trailing space goes, as the delimiter brings one). lm-eval's mathqa
    # scores five option texts instead, which this four-option file cannot reproduce.
    return query.rstrip()


PUBMEDQA_CHOICES = ("yes", "no", "maybe")  # lm_eval/tasks/pubmedqa/pubmedqa.yaml doc_to_choice
# llm-foundry puts each abstract section's label in front of it ("BACKGROUND. ", "MATERIALS AND
# METHODS. "); PubMed's labels of one abstract (PMID 20304513) are ", FSAII" and ", SCCVII".
PUBMEDQA_SECTION_LABEL = re.compile(r"^(?:, )?[A-Z][A-Z0-9 ,&/()\-]*\. ")
PUBMEDQA_FOUNDRY_OPTIONS = "\nA. yes\nB. no\nC. maybe\nAnswer: "
PUBMEDQA_NOTE = (
    "items drawn from all 1,000 labelled ones: lm-eval scores the 500-item test split of bigbio "
    "pubmed_qa_labeled_fold0_source, which the local file (no PMIDs) cannot select"
)


def pubmedqa_context(foundry_context: str) -> str:
    r"""lm-eval's PubMedQA prompt (lm_eval/tasks/pubmedqa/preprocess_pubmedqa.py ``doc_to_text``:
    "Abstract: {CONTEXTS joined by \n}\nQuestion: {QUESTION}\nAnswer:") from llm-foundry's
    "Context: LABEL. text\nLABEL. text\nQuestion: ...\nA. yes\nB. no\nC. maybe\nAnswer: ":
    the "Context: " prefix, each line's section label and the options block go. Rebuilt this
    way, all 1,000 prompts of the local file equal lm-eval's (checked once against the
    CONTEXTS and QUESTION of pubmedqa/pubmedqa's data/ori_pqal.json); a line without a label
    would stay as it is."""
    if not foundry_context.startswith("Context: ") or not foundry_context.endswith(PUBMEDQA_FOUNDRY_OPTIONS):
        raise ValueError("context is not 'Context: ...' ending in the yes/no/maybe options and 'Answer: '")
    body = foundry_context[len("Context: ") : -len(PUBMEDQA_FOUNDRY_OPTIONS)]
    abstract, separator, question = body.rpartition("\nQuestion: ")
    if not separator:
        raise ValueError("context has no '\\nQuestion: ' line")
    contexts = [PUBMEDQA_SECTION_LABEL.sub("", line, count=1) for line in abstract.split("\n")]
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(contexts), question)


def _load_pubmedqa(path: Path) -> list[Instance]:
    """PubMedQA (labelled) from llm-foundry's ``{context, continuation}`` rows: lm-eval's prompt
    (:func:`pubmedqa_context`), scored over yes/no/maybe; the continuation is the answer.

    The items are all 1,000 labelled ones, not lm-eval's: lm-eval scores the 500-item test split
    of bigbio pubmed_qa_labeled_fold0_source, and the file has no PMIDs to select it by (the
    task's result says so in its ``note``)."""
    instances = []
    for line_number, row in _read_jsonl(path):
        answer = str(_field(row, "continuation", path, line_number)).strip()
        if answer not in PUBMEDQA_CHOICES:
            raise UserError(f"{path}:{line_number}: answer {answer!r} is not one of {PUBMEDQA_CHOICES}")
        try:
            context = pubmedqa_context(str(_field(row, "context", path, line_number)))
        except ValueError as exc:
            raise UserError(f"{path}:{line_number}: {exc}") from exc
        instance = Instance((context,), PUBMEDQA_CHOICES, PUBMEDQA_CHOICES.index(answer))
        instances.append(_checked(instance, path, line_number))
    return instances


def _load_winogrande(path: Path) -> list[Instance]:
    # Already in lm-eval's partial-scoring form: the sentence up to the blank with each option
    # filled in, and the rest of the sentence as the shared continuation.
    instances = []
    for line_number, row in _read_jsonl(path):
        contexts = tuple(str(c) for c in _field(row, "context_options", path, line_number))
        continuation = str(_field(row, "continuation", path, line_number))
        gold = int(_field(row, "gold", path, line_number))
        instances.append(_checked(Instance(contexts, (continuation,), gold), path, line_number))
    return instances


def _load_lambada(path: Path) -> list[Instance]:
    # lm-eval's lambada_openai (lm_eval/tasks/lambada/lambada_openai.yaml): the text up to its
    # last space, then " " + what follows. The file splits before the last word instead, which
    # differs where a newline precedes it ("saw the" + "\n\nrecorder"), so the text is joined
    # again and split lm-eval's way.
    instances = []
    for line_number, row in _read_jsonl(path):
        context = str(_field(row, "context", path, line_number))
        target = str(_field(row, "continuation", path, line_number))
        text = context + target if target[:1].isspace() else f"{context} {target}"
        context, _, last = text.rpartition(" ")
        instances.append(Instance((context,), (last,), 0))
    return instances


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag clean-up: WikiHow "[title]" markers become sentence breaks, other
    bracketed markup goes, double spaces collapse."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


HELLASWAG_LINES_PER_TASK = 6


def _load_hellaswag(path: Path) -> list[Instance]:
    """Six lines per item: ``activity_label: ctx``, the gold index, four endings.

    The context line already joins lm-eval's ``ctx_a`` and ``ctx_b``, so lm-eval's
    capitalisation of ``ctx_b`` cannot be redone; everything else follows lm-eval
    (``preprocess(label + ": " + ctx)``, choices ``" " + preprocess(ending)``).
    """
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        # split("\n") rather than splitlines(): endings may hold other Unicode line separators.
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % HELLASWAG_LINES_PER_TASK:
        raise UserError(f"{path}: {len(lines)} lines, not a multiple of {HELLASWAG_LINES_PER_TASK}")
    instances = []
    for start in range(0, len(lines), HELLASWAG_LINES_PER_TASK):
        context, gold_text, *endings = lines[start : start + HELLASWAG_LINES_PER_TASK]
        try:
            gold = int(gold_text)
        except ValueError as exc:
            raise UserError(f"{path}:{start + 2}: gold index {gold_text!r} is not an integer") from exc
        instance = Instance(
            (hellaswag_preprocess(context),), tuple(hellaswag_preprocess(e) for e in endings), gold
        )
        instances.append(_checked(instance, path, start + 2))
    return instances


NLU_TASKS: dict[str, NLUTask] = {
    task.name: task
    for task in (
        NLUTask("piqa", "piqa.jsonl", _query_choices_loader(_piqa_context),
                MULTIPLE_CHOICE, "acc_norm", "physical commonsense, 2 choices (1,838 validation items)"),
        NLUTask("arc_easy", "arc_easy.jsonl", _query_choices_loader(_arc_context),
                MULTIPLE_CHOICE, "acc_norm", "grade-school science, 4 choices (2,376 test items)"),
        NLUTask("arc_challenge", "arc_challenge.jsonl", _query_choices_loader(_arc_context),
                MULTIPLE_CHOICE, "acc_norm", "grade-school science, hard set, 4 choices (1,172 test items)"),
        NLUTask("copa", "copa.jsonl", _query_choices_loader(copa_context, copa_choice),
                MULTIPLE_CHOICE, "acc", "cause and effect, 2 choices (100 validation items)"),
        NLUTask("winogrande", "winogrande.jsonl", _load_winogrande,
                PARTIAL, "acc", "pronoun resolution, 2 contexts scored partially (1,267 validation items)"),
        NLUTask("hellaswag", "hellaswag_val_full.txt.bz2", _load_hellaswag,
                MULTIPLE_CHOICE, "acc_norm", "sentence completion, 4 endings (10,042 validation items)"),
        NLUTask("boolq", "boolq.jsonl", _query_choices_loader(_boolq_context),
                MULTIPLE_CHOICE, "acc", "yes/no questions about a passage (3,270 validation items)"),
        NLUTask("mathqa", "math_qa.jsonl", _query_choices_loader(_mathqa_context),
                MULTIPLE_CHOICE, "acc", "math word problems, 4 lettered options (2,983 items)"),
        NLUTask("pubmedqa", "pubmed_qa_labeled.jsonl", _load_pubmedqa,
                MULTIPLE_CHOICE, "acc", "biomedical yes/no/maybe (1,000 labelled items)", PUBMEDQA_NOTE),
        NLUTask("lambada", "lambada_openai.jsonl", _load_lambada,
                GREEDY, "acc", "last-word prediction, greedy exact match (5,153 test items)"),
    )
}

# The six tasks of the UNDIAL paper's "NLU avg", in the order their results and per-item strata
# are reported.
NLU_AVG6_TASKS: tuple[str, ...] = ("piqa", "arc_challenge", "copa", "winogrande", "pubmedqa", "hellaswag")


# --------------------------------------------------------------------------------------------
# Task selection and data location
# --------------------------------------------------------------------------------------------


def check_task_names(tasks: Sequence[str] | str) -> list[str]:
    """The task names in order without repeats; UserError for a name not in the registry."""
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    names = list(dict.fromkeys(t.strip() for t in tasks))
    unknown = [t for t in names if t not in NLU_TASKS]
    if unknown:
        raise UserError(
            f"unknown NLU task {', '.join(map(repr, unknown))}; known: {', '.join(NLU_TASKS)}"
        )
    if not names:
        raise UserError(f"no NLU task given; known: {', '.join(NLU_TASKS)}")
    return names


def resolve_nlu_dir(nlu_dir: Path | str | None, tasks: Sequence[str]) -> Path:
    """The directory holding the task files; UserError naming what is missing."""
    needed = [NLU_TASKS[t].filename for t in tasks]
    directory = Path(nlu_dir).expanduser() if nlu_dir is not None else data_path("nlu")
    if directory is None or not directory.is_dir():
        if directory is None:
            where = "no shared data directory found"
        else:
            where = f"{directory} is not a directory"
        raise UserError(
            f"NLU data not found ({where}): pass --nlu-dir DIR holding {', '.join(needed)} "
            "(or set UNMEMORIZE_DATA to a folder with nlu/)"
        )
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        raise UserError(
            f"{directory} lacks {', '.join(missing)}: pass --nlu-dir DIR holding {', '.join(needed)}"
        )
    return directory


def load_task(
    name: str, nlu_dir: Path | str | None = None, limit: int | None = None
) -> list[Instance]:
    """The instances of one task, or the fixed ``limit``-sized subset of them."""
    (name,) = check_task_names([name])
    directory = resolve_nlu_dir(nlu_dir, [name])
    task = NLU_TASKS[name]
    return select_subset(task.load(directory / task.filename), limit)


def select_subset(instances: Sequence[Instance], limit: int | None) -> list[Instance]:
    """All instances, or ``limit`` of them drawn with a fixed seed and kept in file order, so
    that runs with the same limit are comparable."""
    if limit is None or limit >= len(instances):
        return list(instances)
    if limit < 1:
        raise UserError(f"--nlu-limit must be at least 1, got {limit}")
    chosen = sorted(random.Random(SUBSET_SEED).sample(range(len(instances)), limit))
    return [instances[i] for i in chosen]


# --------------------------------------------------------------------------------------------
# Log-likelihood scoring
# --------------------------------------------------------------------------------------------


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text on its own (BOS for Gemma/Llama, none for GPT-2)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    # Locate the plain ids rather than compare lengths: some tokenizers also append EOS, which
    # a context must not get.
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's rule: trailing whitespace of the context belongs to the continuation, so the
    context never ends in a lone space token."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def option_requests(instance: Instance) -> list[tuple[str, str]]:
    """The (context, continuation) lm-eval asks the model to score for each option:
    ``target_delimiter + choice`` always (lm_eval/api/task.py ``construct_requests``), so a
    COPA choice, which begins with a space, is scored after two."""
    requests = []
    for index in range(instance.n_options):
        context, choice = instance.option(index)
        requests.append((context, TARGET_DELIMITER + choice))
    return requests


def encode_pairs(
    tokenizer, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """Token ids of each (context, continuation): context with the tokenizer's prefix, and the
    continuation encoded on its own."""
    prefix = special_prefix(tokenizer)
    stand_in = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    empty_context = prefix or [stand_in]
    split = [split_pair(c, x) for c, x in pairs]
    # Encode each distinct text once: multiple-choice items repeat their context per choice.
    contexts = list(dict.fromkeys(c for c, _ in split))
    continuations = list(dict.fromkeys(x for _, x in split))
    context_ids = dict(zip(contexts, _encode(tokenizer, contexts)))
    continuation_ids = dict(zip(continuations, _encode(tokenizer, continuations)))
    encoded = []
    for context, continuation in split:
        ids = context_ids[context]
        target = continuation_ids[continuation]
        if not target:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        encoded.append((prefix + ids if ids else list(empty_context), list(target)))
    return encoded


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def loglikelihoods(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[ContinuationScore]:
    """Log p(continuation | context) for each pair, batched; the result is in input order and
    does not depend on ``batch_size`` beyond float rounding.

    Pairs with the same context share one pass over it (all choices of a multiple-choice
    question; BoolQ/MathQA/PubMedQA's one-token choices need nothing more); the continuations
    are then scored from its keys and values. ``progress(done, total)`` counts distinct
    contexts (distinct model inputs for a model whose layout :func:`split_model` does not know).
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    encoded = _truncated(encode_pairs(tokenizer, pairs), model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[ContinuationScore | None] = [None] * len(encoded)
    with evaluating(model):
        parts = split_model(model)
        if parts is not None:
            _score_shared_contexts(parts, encoded, batch_size, pad_id, progress, results)
        else:
            _score_whole_inputs(model, encoded, batch_size, pad_id, progress, results)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _truncated(encoded: list[tuple[list[int], list[int]]], model) -> list[tuple[list[int], list[int]]]:
    """Pairs longer than the model's positions lose their oldest context tokens, as in lm-eval."""
    max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not max_length:
        return encoded
    kept = []
    for context_ids, continuation_ids in encoded:
        if len(context_ids) + len(continuation_ids) > max_length + 1:
            if len(continuation_ids) > max_length:
                raise UserError(
                    f"a continuation of {len(continuation_ids)} tokens exceeds the model's {max_length}"
                )
            whole = (context_ids + continuation_ids)[-(max_length + 1) :]
            context_ids = whole[: len(whole) - len(continuation_ids)]
        kept.append((context_ids, continuation_ids))
    return kept


def _score_shared_contexts(
    parts: ModelParts, encoded, batch_size: int, pad_id: int, progress, results: list
) -> None:
    """Each distinct context runs once (``batch_size`` contexts per pass, longest first): its
    last position scores every continuation's first token, and its keys and values are the
    cache from which all continuations of more than one token are scored together.
    ``progress(done, total)`` counts distinct contexts."""
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for index, (context_ids, continuation_ids) in enumerate(encoded):
        groups.setdefault(tuple(context_ids), []).append((index, continuation_ids))
    contexts = sorted(groups, key=len, reverse=True)
    done = 0
    for chunk in _length_buckets(contexts, batch_size):
        followed = [(row, index, continuation) for row, context in enumerate(chunk)
                    for index, continuation in groups[context] if len(continuation) > 1]
        hidden, states = forward_hidden(parts, chunk, pad_token_id=pad_id, keep_states=bool(followed))
        owners, vectors, targets = [], [], []
        for row, context in enumerate(chunk):
            for index, continuation in groups[context]:
                owners.append(index)
                vectors.append(hidden[row, len(context) - 1])
                targets.append(continuation[0])
        del hidden
        # Continuations are short: four times as many rows fit the same work as a context pass.
        followed.sort(key=lambda item: len(item[2]), reverse=True)
        for batch in _length_buckets(followed, 4 * batch_size, key=lambda item: len(item[2])):
            continued = _continuation_hidden(
                parts, [states[row] for row, _, _ in batch], [len(chunk[row]) for row, _, _ in batch],
                [continuation[:-1] for _, _, continuation in batch], pad_id,
            )
            for k, (_, index, continuation) in enumerate(batch):
                owners.extend([index] * (len(continuation) - 1))
                vectors.extend(continued[k, : len(continuation) - 1])
                targets.extend(continuation[1:])
        _accumulate(parts, owners, torch.stack(vectors), targets, results)
        done += len(chunk)
        if progress is not None:
            progress(done, len(contexts))


# A batch takes sequences down to this fraction of its longest: padding costs attention over
# the whole padded square (a mask rules out the causal kernel) and every layer's work.
_BUCKET_SHARE = 0.75


def _length_buckets(ordered: list, batch_size: int, key: Callable[[Any], int] = len) -> list[list]:
    """Consecutive runs of ``ordered`` (longest ``key`` first): at most ``batch_size`` each,
    and none shorter than _BUCKET_SHARE of its run's first."""
    buckets: list[list] = []
    for item in ordered:
        if buckets and len(buckets[-1]) < batch_size and key(item) >= _BUCKET_SHARE * key(buckets[-1][0]):
            buckets[-1].append(item)
        else:
            buckets.append([item])
    return buckets


def _continuation_hidden(
    parts: ModelParts, states: list[PrefixState], context_lengths: list[int],
    inputs: list[list[int]], pad_id: int,
) -> torch.Tensor:
    """Hidden states [rows, width, H] of ``inputs`` fed after each row's context keys and
    values (left padded before the context, right padded after the input)."""
    width = max(len(ids) for ids in inputs)
    cache, context_mask = cache_from_states(states, context_lengths, width)
    input_ids, input_mask = right_padded(inputs, pad_id)
    positions = torch.tensor(context_lengths)[:, None] + torch.arange(width)[None, :]
    mask = torch.cat([context_mask, input_mask], dim=1)
    return parts.hidden(input_ids.to(parts.device), mask.to(parts.device), positions.to(parts.device), cache)


def _accumulate(parts: ModelParts, owners: list[int], vectors: torch.Tensor, targets: list[int],
                results: list) -> None:
    """Sum each owner's token log-probabilities (and whether each token is the argmax) from the
    hidden states that predict its tokens, 128 positions' logits at a time (the output
    layer's fast sliced path; see :func:`unmemorize.metrics.decoding.ModelParts.logits`)."""
    sums: dict[int, float] = {}
    greedy: dict[int, bool] = {}
    counts: dict[int, int] = {}
    targets_t = torch.tensor(targets, device=vectors.device)
    for start in range(0, len(owners), 128):
        # log-softmax over 262k logits needs more than 8 mantissa bits
        logits = at_least_float32(parts.logits(vectors[start : start + 128]))
        wanted = targets_t[start : start + 128]
        logprobs = logits.gather(1, wanted[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        hits = logits.argmax(dim=-1) == wanted
        for owner, logprob, hit in zip(owners[start : start + 128], logprobs.tolist(), hits.tolist()):
            sums[owner] = sums.get(owner, 0.0) + logprob
            greedy[owner] = greedy.get(owner, True) and bool(hit)
            counts[owner] = counts.get(owner, 0) + 1
    for owner in sums:
        results[owner] = ContinuationScore(sums[owner], greedy[owner], counts[owner])


def _score_whole_inputs(model, encoded, batch_size: int, pad_id: int, progress, results: list) -> None:
    """For models :func:`split_model` does not know: one forward per distinct model input
    (context + continuation without its last token), ``batch_size`` at a time, longest first
    (little padding; an out-of-memory error shows up on the first batch)."""
    sequences: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
    for index, (context_ids, continuation_ids) in enumerate(encoded):
        model_input = tuple((context_ids + continuation_ids)[:-1])
        first_position = len(model_input) - len(continuation_ids)
        sequences.setdefault(model_input, []).append((index, first_position, continuation_ids))
    ordered = sorted(sequences.items(), key=lambda item: -len(item[0]))
    device = model_device(model)
    for batch_start in range(0, len(ordered), batch_size):
        batch = ordered[batch_start : batch_start + batch_size]
        _score_batch(model, batch, pad_id, device, results)
        if progress is not None:
            progress(min(batch_start + batch_size, len(ordered)), len(ordered))


def _score_batch(model, batch, pad_id: int, device: torch.device, results: list) -> None:
    # Right padding: causal attention keeps real tokens from seeing the pads, and positions
    # stay 0..n-1, so a sequence scores the same in any batch.
    input_ids, attention_mask = right_padded([model_input for model_input, _ in batch], pad_id)
    rows, cols, targets, owners = [], [], [], []
    for row, (_, requests) in enumerate(batch):
        for index, first_position, continuation_ids in requests:
            rows.extend([row] * len(continuation_ids))
            cols.extend(range(first_position, first_position + len(continuation_ids)))
            targets.extend(continuation_ids)
            owners.extend([index] * len(continuation_ids))
    rows_t = torch.tensor(rows, device=device)
    cols_t = torch.tensor(cols, device=device)
    logits = _selected_logits(model, input_ids.to(device), attention_mask.to(device), rows_t, cols_t)
    logits = at_least_float32(logits)  # log-softmax over 262k logits needs more than 8 mantissa bits
    targets_t = torch.tensor(targets, device=device)
    token_logprobs = logits.gather(1, targets_t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    token_greedy = logits.argmax(dim=-1) == targets_t
    token_logprobs, token_greedy = token_logprobs.tolist(), token_greedy.tolist()

    sums: dict[int, float] = {}
    greedy: dict[int, bool] = {}
    counts: dict[int, int] = {}
    for owner, logprob, is_greedy in zip(owners, token_logprobs, token_greedy):
        sums[owner] = sums.get(owner, 0.0) + logprob
        greedy[owner] = greedy.get(owner, True) and bool(is_greedy)
        counts[owner] = counts.get(owner, 0) + 1
    for owner in sums:
        results[owner] = ContinuationScore(sums[owner], greedy[owner], counts[owner])


def _selected_logits(model, input_ids, attention_mask, rows, cols) -> torch.Tensor:
    """Logits at (rows[k], cols[k]) only, shape (len(rows), vocab).

    A full (batch, length, vocab) logit tensor would take gigabytes with Gemma-3's 262k
    vocabulary, so a pre-hook on the output layer hands it only the hidden states at the
    wanted positions; whatever the model does after the output layer (e.g. logit soft-capping)
    still applies.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:  # no separable output layer: take full logits and index them
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits[rows, cols]

    def keep_wanted_positions(_module, args):
        hidden = args[0]
        return (hidden[rows, cols].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(keep_wanted_positions)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        handle.remove()
    return logits.reshape(-1, logits.shape[-1])


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean with the sample (n-1) variance, as lm-eval reports it; for
    0/1 values this is sqrt(p(1-p)/(n-1)). NaN for fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def _argmax(values: Sequence[float]) -> int:
    # First index on ties, like numpy.argmax in lm-eval.
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choice_predictions(logprobs: Sequence[float], choice_lengths: Sequence[int]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction): the highest log-likelihood, and the highest
    log-likelihood per character of choice text."""
    normalized = [lp / max(length, 1) for lp, length in zip(logprobs, choice_lengths)]
    return _argmax(logprobs), _argmax(normalized)


def _accuracy(correct: Sequence[float], key: str) -> dict[str, Any]:
    """``key``, its stderr (lm-eval's) and ``{key}_ci95``: the 95 % percentile bootstrap interval
    of the mean over the items (seeded, so the same as the suite's ``intervals`` entry for the
    metric), chosen over mean ± 1.96 · stderr because it stays within [0, 1] (COPA's 0.85 of 20
    would otherwise reach 1.01)."""
    n = len(correct)
    return {
        key: sum(correct) / n if n else math.nan,
        f"{key}_stderr": mean_stderr(correct),
        f"{key}_ci95": list(bootstrap_interval(Measurement.of_mean(correct))),
    }


@dataclass(frozen=True)
class ItemOutcomes:
    """Per-item results of one task, in the order of its instances: ``correct[metric]`` is 1.0 or
    0.0 per item for ``acc`` (and ``acc_norm`` for multiple choice); ``target_logprobs`` holds
    LAMBADA's log p(target) per item."""

    correct: dict[str, list[float]]
    target_logprobs: list[float]


def score_items(
    model, tokenizer, task: NLUTask, instances: Sequence[Instance], *, batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> ItemOutcomes:
    """Score every option of every instance (:func:`option_requests`) and judge each item."""
    requests: list[tuple[str, str]] = []
    lengths: list[int] = []  # lm-eval's completion_len: the choice without the delimiter
    for instance in instances:
        requests.extend(option_requests(instance))
        lengths.extend(len(instance.option(i)[1]) for i in range(instance.n_options))
    report = (lambda done, total: progress(task.name, done, total)) if progress else None
    scores = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, progress=report)

    correct, correct_norm, target_logprobs = [], [], []
    offset = 0
    for instance in instances:
        options = scores[offset : offset + instance.n_options]
        option_lengths = lengths[offset : offset + instance.n_options]
        offset += instance.n_options
        if task.scoring == GREEDY:
            correct.append(float(options[instance.gold].is_greedy))
            target_logprobs.append(options[instance.gold].logprob)
            continue
        prediction, prediction_norm = choice_predictions([s.logprob for s in options], option_lengths)
        correct.append(float(prediction == instance.gold))
        correct_norm.append(float(prediction_norm == instance.gold))
    outcomes = {"acc": correct}
    if task.scoring == MULTIPLE_CHOICE:
        outcomes["acc_norm"] = correct_norm
    return ItemOutcomes(outcomes, target_logprobs)


def task_metrics(task: NLUTask, outcomes: ItemOutcomes) -> dict[str, Any]:
    """``acc``, ``acc_stderr``, ``acc_ci95``, ``n``, plus ``acc_norm``/``acc_norm_stderr``/
    ``acc_norm_ci95`` for multiple choice, ``perplexity`` for LAMBADA and the task's ``note``."""
    metrics: dict[str, Any] = {}
    for metric, values in outcomes.correct.items():
        metrics.update(_accuracy(values, metric))
    if task.scoring == GREEDY:
        logprobs = outcomes.target_logprobs
        metrics["perplexity"] = math.exp(-sum(logprobs) / len(logprobs)) if logprobs else math.nan
    metrics["n"] = len(outcomes.correct["acc"])
    if task.note:
        metrics["note"] = task.note
    return metrics


def score_task(
    model,
    tokenizer,
    task: NLUTask | str,
    instances: Sequence[Instance],
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Metrics of one task on the given instances (:func:`task_metrics`)."""
    if isinstance(task, str):
        task = NLU_TASKS[check_task_names([task])[0]]
    outcomes = score_items(model, tokenizer, task, instances, batch_size=batch_size, progress=progress)
    return task_metrics(task, outcomes)


def _headline(task: str) -> str:
    return NLU_TASKS[task].headline


def _summed_acc(task: str) -> str:
    return "acc"


# name -> the metric each task contributes to that average
AVERAGES: dict[str, Callable[[str], str]] = {"avg6_lm_eval": _headline, "avg6_summed_acc": _summed_acc}


def nlu_averages(outcomes: dict[str, ItemOutcomes]) -> dict[str, Measurement]:
    r"""The two averages over the NLU_AVG6_TASKS present in ``outcomes`` (none when none is),
    as per-item measurements: one stratum per task, in NLU_AVG6_TASKS order, so a bootstrap
    (paired or not) resamples items within each task and the value is the mean of the task
    means.

    * ``avg6_lm_eval``: each task's headline metric, i.e. ``acc_norm`` where the task's
      lm-evaluation-harness config reports it (EleutherAI/lm-evaluation-harness,
      lm_eval/tasks/piqa/piqa.yaml, arc/arc_easy.yaml which arc_challenge.yaml includes,
      hellaswag/hellaswag.yaml) and ``acc`` for copa, winogrande and pubmedqa, on lm-eval's
      prompts.
    * ``avg6_summed_acc``: plain ``acc`` of every task, the choice with the highest summed
      log-likelihood of its tokens: the UNDIAL paper's scoring (dong-river/LLM_unlearning,
      utils/benchmark.py ``classification_verbalizer``: argmin of the summed token NLL, no
      length normalisation). It uses lm-eval's prompts with the paper's ``acc`` scoring, not
      the paper's own prompts (utils/data_utils.py ``Custom_Dataset.convert_to_features``: the
      bare goal/question/premise/ctx, then " " + the choice; PubMedQA "Context: {abstract}\n
      Question: {question}\nAnswer:"). From the local files those can be rebuilt for PIQA
      (though 230 solutions of 118 items lost surrounding whitespace), COPA (premise = query
      without its connective + ".", choices capitalised again), WinoGrande (the sentence up to
      the blank, then " " + option + " " + rest) and PubMedQA (the paper's own 500-item file is
      the shared data's reference/pubmed_qa.csv), but not for ARC-Challenge (the paper scores
      the 299-item validation split; the local file is the 1,172-item test split) nor HellaSwag
      (the paper scores HF's raw ``ctx`` and endings; the local file has the WikiHow markup
      rewritten already). An average of partly rebuilt prompts would follow neither protocol,
      so all six keep lm-eval's. The paper's code also averages per-batch accuracies; this is
      the per-item mean.
    """
    present = [task for task in NLU_AVG6_TASKS if task in outcomes]
    if not present:
        return {}
    return {
        name: Measurement("mean_of_means", {task: outcomes[task].correct[metric_of(task)] for task in present})
        for name, metric_of in AVERAGES.items()
    }


@dataclass(frozen=True)
class NLUEvaluation:
    """What :func:`measure_nlu` found: ``results`` (see :func:`evaluate_nlu`) and the per-item
    ``measurements`` behind them, keyed by their path in ``results``: ``"{task}.{metric}"`` for
    each task's headline metric and ``acc``, and ``"avg6_lm_eval"``/``"avg6_summed_acc"``."""

    results: dict[str, Any]
    measurements: dict[str, Measurement]


def measure_nlu(
    model,
    tokenizer,
    tasks: Sequence[str] = NLU_AVG6_TASKS,
    *,
    nlu_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> NLUEvaluation:
    """Zero-shot accuracy of ``model`` on each task and the two averages, with per-item values.

    ``limit`` takes the same seeded subset of each task every run, kept in file order, so every
    model is measured on the same items in the same order. ``progress(task, done, total)``
    counts model input sequences of a task.
    """
    names = check_task_names(tasks)
    directory = resolve_nlu_dir(nlu_dir, names)
    if limit is not None and limit < 1:
        raise UserError(f"--nlu-limit must be at least 1, got {limit}")
    results: dict[str, Any] = {}
    measurements: dict[str, Measurement] = {}
    outcomes: dict[str, ItemOutcomes] = {}
    for name in names:
        task = NLU_TASKS[name]
        instances = select_subset(task.load(directory / task.filename), limit)
        outcomes[name] = score_items(model, tokenizer, task, instances, batch_size=batch_size, progress=progress)
        results[name] = task_metrics(task, outcomes[name])
        for metric in dict.fromkeys((task.headline, "acc")):
            measurements[f"{name}.{metric}"] = Measurement.of_mean(outcomes[name].correct[metric])
    for average, measurement in nlu_averages(outcomes).items():
        results[average] = {
            "acc": measurement.value(),
            "tasks": list(measurement.units),
            "ci95": list(bootstrap_interval(measurement)),  # items resampled within each task
        }
        measurements[average] = measurement
    return NLUEvaluation(results, measurements)


def evaluate_nlu(
    model,
    tokenizer,
    tasks: Sequence[str] = NLU_AVG6_TASKS,
    *,
    nlu_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> dict:
    """The results of :func:`measure_nlu` without the per-item values:
    ``{task: {"acc", "acc_stderr", "acc_ci95", ["acc_norm", "acc_norm_stderr",
    "acc_norm_ci95",] ["perplexity",] "n", ["note"]}, ..., "avg6_lm_eval": {"acc", "tasks",
    "ci95"}, "avg6_summed_acc": {...}}``; the averages are left out when none of NLU_AVG6_TASKS
    was evaluated, and average the ones that were (listed in ``tasks``).
    """
    return measure_nlu(
        model, tokenizer, tasks, nlu_dir=nlu_dir, limit=limit, batch_size=batch_size, progress=progress
    ).results
