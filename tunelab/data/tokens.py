"""Count the tokens of chat examples: in total, and how many of them are trained on.

    tunelab data stats train.jsonl --model default          # a local model: its tokenizer and chat template
    tunelab data stats train.jsonl --target openai:gpt-4o-mini   # OpenAI: o200k_base / cl100k_base

Local models are counted exactly as training sees them: the conversation rendered by the model's chat
template, tokenized, with the tokens `conversation/render.py` puts loss on counted as trained. Doing that
naively renders the template 2–3 times per assistant turn and tokenizes ~60 MB for a 100,000-example
file, which takes minutes. Two shortcuts keep it to seconds, and both fall back to the naive path
whenever they could differ from it:

- **Template skeletons.** Conversations with the same roles render identically apart from their message
  texts. The template is rendered once per role sequence with placeholder texts, and each example is
  filled into that skeleton. The skeleton is checked against a real render for the first examples of each
  shape; messages with leading or trailing whitespace (templates often trim) always take the real render.
- **Chunk cache** (SentencePiece-style tokenizers such as Gemma's, whose vocabulary has no token that
  runs across the start of a space-prefixed word): text is cut into space-prefixed chunks and each chunk's
  tokens are cached, so a word seen before costs a dictionary lookup. Whether a tokenizer qualifies is
  checked from its vocabulary; others are tokenized in batches.

OpenAI targets use the real vocabularies, shipped offline by `bpe-openai`, and the per-message overhead
of OpenAI's own counting recipe (3 tokens per message, 1 per name, 3 to prime the reply). The trained
tokens are the assistant messages' (weight 0 excluded). Without `bpe-openai`, counts are characters / 4
and labelled estimates.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path
from itertools import accumulate, chain

from tunelab.conversation.render import trained_character_spans, trained_positions
from tunelab.conversation.schema import content_text

# Sentinels for template skeletons: private-use characters no real text is expected to contain.
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_PATTERN = re.compile("\ue000(\\d+)\ue001")
_SKELETON_CHECKS = 3  # examples per role sequence compared against a real render
# A space-prefixed chunk: spaces, then non-spaces. `> </` stays together because Gemma's vocabulary has
# one token (`>▁</`) that spans a word start.
_CHUNK = re.compile(r" *(?:[^ ]|(?<=>) (?=</))+| +")
_CHUNK_CACHE_LIMIT = 1_000_000  # entries; cleared when reached so memory stays bounded


@dataclass(frozen=True)
class Counts:
    total: int  # every token of the rendered example
    trained: int  # tokens that carry loss (assistant replies and their end-of-turn marker)


class LocalTokenCounter:
    """Exact token counts for a local model (tokenizer + chat template), fast enough for big files."""

    backend = "local"

    def __init__(self, tokenizer, model_name: str, default_limit: int | None = None, parameters: int | None = None):
        self.tokenizer = tokenizer
        self.model = model_name
        self.label = f"{model_name} tokenizer and chat template"
        self.exact = True
        self.default_limit = default_limit  # where training cuts an example
        self.parameters = parameters
        self._skeletons: dict[tuple, _Skeleton | None] = {}
        self._checks_left: dict[tuple, int] = {}
        # The chunk cache: each chunk's token start offsets. Keyed by the chunk for a text's first chunk,
        # and by the chunk without its leading space for the others (saves building a string per word).
        self._use_chunks = splits_at_word_starts(tokenizer)
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._bare: dict[str, tuple[int, ...]] = {}
        self._spaced: dict[str, tuple[int, ...]] = {}
        self._pieces: dict[str, tuple[int, ...]] = {}  # chunks cut at template markers, see _cache_chunks
        self._markers = _template_markers(tokenizer) if self._use_chunks else None

    def count_batch(self, conversations: list[list[dict]]) -> list[Counts]:
        rendered = [self._render(messages) for messages in conversations]
        if self._use_chunks:
            counted = self._count_by_chunks(rendered)
            if counted is not None:
                return counted
        encodings = self.tokenizer([text for text, _ in rendered], add_special_tokens=False,
                                   return_offsets_mapping=True)
        return [Counts(len(ids), len(trained_positions(offsets, spans)))
                for ids, offsets, (_, spans) in zip(encodings["input_ids"], encodings["offset_mapping"], rendered)]

    def _render(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and trained character spans, from a checked skeleton where possible."""
        shape = _shape(messages)
        if shape is None:
            return trained_character_spans(self.tokenizer, messages)
        if shape not in self._skeletons:
            self._skeletons[shape] = _Skeleton.build(self.tokenizer, messages)
            self._checks_left[shape] = _SKELETON_CHECKS
        skeleton = self._skeletons[shape]
        if skeleton is None:
            return trained_character_spans(self.tokenizer, messages)
        filled = skeleton.fill([m["content"] for m in messages])
        if self._checks_left[shape]:
            self._checks_left[shape] -= 1
            real = trained_character_spans(self.tokenizer, messages)
            if real != filled:
                self._skeletons[shape] = None  # this template does more than place the texts; render each
                return real
        return filled

    def _count_by_chunks(self, rendered: list[tuple[str, list[tuple[int, int]]]]) -> list[Counts] | None:
        """Counts from the chunk cache, or None if this tokenizer turns out not to suit it."""
        split = [_chunk_keys(text) for text, _ in rendered]
        if not self._cache_chunks(split):
            return None
        return [self._count_chunks(text, spans, *keys) for (text, spans), keys in zip(rendered, split)]

    def _count_chunks(self, text: str, spans, first: str, rest: list[str], simple: bool) -> Counts:
        starts = [self._bare[first], *map(self._spaced.__getitem__, rest)]
        tokens_through = list(accumulate(map(len, starts)))  # tokens in chunks 0..k
        total = tokens_through[-1]
        if not spans:
            return Counts(total, 0)
        begins = None if simple else [0, *accumulate([len(first), *(len(key) + 1 for key in rest)])]

        def tokens_starting_before(position: int) -> int:
            if position >= len(text):
                return total
            if simple:  # every chunk after the first begins at a single space
                index = text.count(" ", 0, position + 1)
                begin = text.rfind(" ", 0, position + 1) if index else 0
            else:
                index = bisect_right(begins, position) - 1
                begin = begins[index]
            return (tokens_through[index - 1] if index else 0) + bisect_left(starts[index], position - begin)

        return Counts(total, sum(tokens_starting_before(end) - tokens_starting_before(start) for start, end in spans))

    def _cache_chunks(self, split) -> bool:
        """Tokenize the chunks not seen before; False (and the chunk path off) if a token has no width.

        A chunk where a template marker meets a word (`word<end_of_turn>\n<start_of_turn>model\nWord`) is
        almost always new, so such chunks are cut at the markers — the tokenizer cuts there too, since
        added tokens are matched before anything else — and built from cached pieces.
        """
        missing_bare = {first for first, _, _ in split}.difference(self._bare)
        missing_spaced = set(chain.from_iterable(rest for _, rest, _ in split)).difference(self._spaced)
        if len(self._bare) + len(self._spaced) + len(missing_bare) + len(missing_spaced) > _CHUNK_CACHE_LIMIT:
            self._bare.clear()
            self._spaced.clear()
            self._pieces.clear()
            return self._cache_chunks(split)
        missing = [(self._bare, key, key) for key in missing_bare] + \
                  [(self._spaced, key, " " + key) for key in missing_spaced]
        parts_of = [[part for part in self._markers.split(chunk) if part] if self._markers else [chunk]
                    for _, _, chunk in missing]
        new_parts = list(set(chain.from_iterable(parts_of)).difference(self._pieces))
        for part, encoding in zip(new_parts, self._backend.encode_batch(new_parts, add_special_tokens=False)):
            if any(end <= start for start, end in encoding.offsets):
                # render.trained_positions never trains such a token; counting it needs the plain path.
                self._use_chunks = False
                return False
            self._pieces[part] = tuple(start for start, _ in encoding.offsets)
        for (cache, key, _), parts in zip(missing, parts_of):
            if len(parts) == 1:
                cache[key] = self._pieces[parts[0]]
                continue
            starts, offset = [], 0
            for part in parts:
                starts += [start + offset for start in self._pieces[part]]
                offset += len(part)
            cache[key] = tuple(starts)
        return True


def _template_markers(tokenizer) -> re.Pattern | None:
    """The added tokens a chat template writes (turn markers, BOS/EOS), as a splitting pattern.

    Only tokens that take no neighbouring whitespace (no lstrip/rstrip/single_word) and match the raw
    text (not normalized) qualify: for those, the text on either side is tokenized independently.
    """
    template = getattr(tokenizer, "chat_template", None) or ""
    wanted = {tokenizer.bos_token, tokenizer.eos_token}
    markers = [token.content for token in tokenizer.added_tokens_decoder.values()
               if (token.content in template or token.content in wanted) and len(token.content) > 1
               and not (token.lstrip or token.rstrip or token.single_word or token.normalized)]
    return re.compile("(" + "|".join(map(re.escape, sorted(markers, key=len, reverse=True))) + ")") if markers else None


def _chunk_keys(text: str) -> tuple[str, list[str], bool]:
    """Chunk 0 as it is, every later chunk without the space it starts with, and whether all are simple.

    Simple (the usual case): no run of spaces and no `> </`, so the chunks are `str.split(" ")`.
    """
    if "  " not in text and "> </" not in text:
        words = text.split(" ")
        return words[0], words[1:], True
    chunks = _CHUNK.findall(text)
    if chunks and not chunks[0].startswith(" "):
        return chunks[0], [chunk[1:] for chunk in chunks[1:]], False
    return "", [chunk[1:] for chunk in chunks], False


class _Skeleton:
    """A chat template's rendering of one role sequence, with a placeholder where each message text goes."""

    def __init__(self, parts: list, spans: list[tuple[tuple[int, int], tuple[int, int]]]):
        self.parts = parts  # literal strings and message indexes, alternating as they occur
        self.spans = spans  # trained spans, each end as (part index, offset within that part)

    @classmethod
    def build(cls, tokenizer, messages: list[dict]) -> _Skeleton | None:
        placeholders = [{**m, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)]
        try:
            text, spans = trained_character_spans(tokenizer, placeholders)
        except Exception:
            return None
        found = [int(m.group(1)) for m in _PLACEHOLDER_PATTERN.finditer(text)]
        if sorted(found) != list(range(len(messages))):
            return None  # the template drops, repeats or alters a message text
        parts, boundaries, cursor = [], [], 0
        for match in _PLACEHOLDER_PATTERN.finditer(text):
            parts += [text[cursor:match.start()], int(match.group(1))]
            boundaries.append((match.start(), match.end()))
            cursor = match.end()
        parts.append(text[cursor:])
        located = []
        for start, end in spans:
            ends = [_locate(position, boundaries) for position in (start, end)]
            if None in ends:
                return None  # a span edge inside a placeholder: not expressible
            located.append(tuple(ends))
        return cls(parts, located)

    def fill(self, texts: list[str]) -> tuple[str, list[tuple[int, int]]]:
        pieces, part_starts, length = [], [], 0
        for part in self.parts:
            piece = texts[part] if isinstance(part, int) else part
            part_starts.append(length)
            pieces.append(piece)
            length += len(piece)
        spans = [(part_starts[a_part] + a_offset, part_starts[b_part] + b_offset)
                 for (a_part, a_offset), (b_part, b_offset) in self.spans]
        return "".join(pieces), spans


def _locate(position: int, boundaries: list[tuple[int, int]]) -> tuple[int, int] | None:
    """A position in the placeholder text as (part index, offset), literal parts being the even indexes."""
    literal_start = 0
    for index, (start, end) in enumerate(boundaries):
        if position <= start:
            return 2 * index, position - literal_start
        if position < end:
            return None
        literal_start = end
    return 2 * len(boundaries), position - literal_start


def _shape(messages: list[dict]) -> tuple | None:
    """What a skeleton depends on besides the texts; None when only a real render will do."""
    shape = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or (content and (content[0].isspace() or content[-1].isspace())) \
                or len(message) > 2 + ("weight" in message) or "\ue000" in content:
            return None
        shape.append((message["role"], message.get("weight", 1) == 0))
    return tuple(shape)


def splits_at_word_starts(tokenizer) -> bool:
    """True when tokenizing space-prefixed chunks one by one gives the same tokens as the whole text.

    That holds for SentencePiece-style BPE (spaces become `▁`, no pre-tokenizer) when no vocabulary
    entry runs from a non-space character into a `▁`, other than Gemma's `>▁</`, which the chunk pattern
    keeps whole.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is None or type(backend.model).__name__ != "BPE" or backend.model.dropout:
        return False
    space_to_metaspace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    no_op_split = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
    pre_tokenizer = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer else None
    if json.loads(backend.normalizer.__getstate__()) != space_to_metaspace or pre_tokenizer not in (None, no_op_split):
        return False
    if any(" " in token.content or "▁" in token.content for token in tokenizer.added_tokens_decoder.values()):
        return False
    crossing = [token for token in backend.get_vocab(with_added_tokens=False) if "▁" in token.lstrip("▁")]
    return all(token == ">▁</" for token in crossing)


def token_counter(model: str | None = None, target: str | None = None, chat_template=None):
    """The counter for `--target openai:MODEL`, or else for the local `--model` (default: the default)."""
    if target:
        from tunelab.data.cost import openai_model

        if not target.startswith("openai:"):
            raise ValueError(f"--target {target!r}: expected openai:MODEL, e.g. openai:gpt-4o-mini")
        snapshot, entry = openai_model(target.removeprefix("openai:"))
        return OpenAITokenCounter(snapshot, entry["encoding"], entry["max_tokens_per_example"])
    from tunelab.core.settings import TrainConfig
    from tunelab.data.cost import parameter_count
    from tunelab.models.resolve import load_tokenizer, resolve_model

    resolved = resolve_model(model or "default")
    tokenizer = load_tokenizer(resolved.path, chat_template and str(chat_template))
    limit = TrainConfig.model_fields["max_length"].default  # what `tunelab train` cuts at unless told otherwise
    context = _context_length(resolved.path)
    parameters = parameter_count(resolved.path) if resolved.source != "hub" else None
    return LocalTokenCounter(tokenizer, resolved.name, min(limit, context or limit), parameters)


def _context_length(model_dir: str) -> int | None:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return None
    settings = json.loads(config.read_text(encoding="utf-8"))
    settings = settings.get("text_config", settings)
    return settings.get("max_position_embeddings")


# OpenAI -------------------------------------------------------------------------------------------------

class OpenAITokenCounter:
    """Token counts for an OpenAI model, with OpenAI's own per-message overhead."""

    TOKENS_PER_MESSAGE, TOKENS_PER_NAME, REPLY_PRIMER = 3, 1, 3
    backend = "openai"

    def __init__(self, model: str, encoding_name: str, default_limit: int | None = None):
        self.model = model
        self.default_limit = default_limit  # OpenAI's per-example token limit
        self.parameters = None
        try:
            import bpe_openai

            self._encode = bpe_openai.get_encoding(encoding_name).encode_ordinary
            self.label, self.exact = f"{encoding_name} ({model})", True
        except ImportError:
            self._encode = lambda text: range(len(text) // 4 + 1)
            self.label, self.exact = f"estimate: characters / 4 ({model}; install bpe-openai for exact counts)", False

    def count_batch(self, conversations: list[list[dict]]) -> list[Counts]:
        return [self._count(messages) for messages in conversations]

    def _count(self, messages: list[dict]) -> Counts:
        total, trained = self.REPLY_PRIMER, 0
        for message in messages:
            total += self.TOKENS_PER_MESSAGE + len(self._encode(message["role"]))
            text = _message_text(message)
            tokens = len(self._encode(text)) if text else 0
            total += tokens
            if "name" in message:
                total += self.TOKENS_PER_NAME + len(self._encode(str(message["name"])))
            if message["role"] == "assistant" and message.get("weight", 1) != 0:
                trained += tokens
        return Counts(total, trained)


def _message_text(message: dict) -> str:
    """What of a message is tokenized: its text (text parts joined), and its tool calls as JSON."""
    text = content_text(message.get("content")) or ""
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"])
    return text

