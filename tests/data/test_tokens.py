"""Token counts: the fast paths (template skeletons, chunk cache) must equal rendering and tokenizing each
conversation the way training does, and OpenAI counts must follow OpenAI's recipe on the real vocabulary."""

import copy

import pytest

from tunelab.conversation.render import render_conversation
from tunelab.data.tokens import Counts, LocalTokenCounter, OpenAITokenCounter, splits_at_word_starts

TRICKY = [
    [{"role": "user", "content": "  leading and trailing spaces  "}, {"role": "assistant", "content": "Sure thing."}],
    [{"role": "user", "content": "double  spaces   here"}, {"role": "assistant", "content": "Reply  with  runs."}],
    [{"role": "user", "content": "html <b> </b> and > </x>"}, {"role": "assistant", "content": "Tags <i> </i> ok."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "One?"},
     {"role": "assistant", "content": "Context only.", "weight": 0}, {"role": "user", "content": "Two?"},
     {"role": "assistant", "content": "Trained, with a name.\nAnd a newline."}],
    [{"role": "user", "content": "ünïcödé, 中文 and emoji 😀"}, {"role": "assistant", "content": "Ça va 👍"}],
]


def reference(tokenizer, conversations):
    counts = []
    for messages in conversations:
        example = render_conversation(tokenizer, messages)
        counts.append(Counts(len(example.input_ids), example.trained_tokens))
    return counts


def sentencepiece_style_tokenizer(corpus):
    """A Gemma-style tokenizer: spaces become ▁, BPE without a pre-tokenizer, so the chunk cache applies."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tunelab.conversation.templates import GEMMA_CHAT_TEMPLATE

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")  # for training only
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=800, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]))
    bpe.pre_tokenizer = None
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def conversations(support_conversations):
    return [c["messages"] for c in support_conversations] + TRICKY


def test_chunk_cache_counts_equal_rendering_each_conversation(conversations):
    tokenizer = sentencepiece_style_tokenizer([m["content"] for c in conversations for m in c])
    assert splits_at_word_starts(tokenizer)
    counter = LocalTokenCounter(tokenizer, "sp")
    assert counter.count_batch(conversations) == reference(tokenizer, conversations)
    assert counter._spaced  # the cache was used, not the plain path


def test_byte_level_tokenizer_takes_the_plain_path(conversations, tiny_tokenizer):
    assert not splits_at_word_starts(tiny_tokenizer)
    counter = LocalTokenCounter(tiny_tokenizer, "tiny")
    assert counter.count_batch(conversations) == reference(tiny_tokenizer, conversations)


def test_a_template_that_rewrites_texts_is_rendered_for_real(conversations, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content'] | trim", "message['content'] | upper")
    counter = LocalTokenCounter(tokenizer, "upper")
    assert counter.count_batch(conversations) == reference(tokenizer, conversations)
    assert None in counter._skeletons.values()  # the skeleton check caught it


def test_openai_counts_follow_openai_recipe():
    counter = OpenAITokenCounter("gpt-4o-mini-2024-07-18", "o200k_base")
    # o200k_base: "Hello, world!" is 4 tokens ([13225, 11, 2375, 0] as tiktoken gives), "user" and
    # "assistant" 1 each; 3 per message and 3 to prime the reply.
    messages = [{"role": "user", "content": "Hello, world!"}, {"role": "assistant", "content": "Hello, world!"}]
    assert counter.count_batch([messages]) == [Counts(3 + (3 + 1 + 4) * 2, 4)]
    weighted = [messages[0], dict(messages[1], weight=0)]
    assert counter.count_batch([weighted])[0].trained == 0
    # Content as a list of text parts counts the joined text, as a string would.
    parts = [messages[0], {"role": "assistant", "content": [{"type": "text", "text": "Hello, "},
                                                               {"type": "text", "text": "world!"}]}]
    assert counter.count_batch([parts]) == counter.count_batch([messages])
