"""clipfast.tokenizer: ids equal open_clip's on a varied corpus, truncation, specials, decode, options."""
import hashlib
import random
from pathlib import Path

import pytest
import torch

from clipfast import tokenizer as cf_tok
from clipfast.tokenizer import EOT_TOKEN_ID, SOT_TOKEN_ID, SimpleTokenizer, tokenize

open_clip = pytest.importorskip("open_clip")

CORPUS = [
    "a photo of a cat",
    "",
    "   ",
    "  Hello   World!!  ",
    "A Photo Of A DOG, taken in 1999.",
    "naïve café déjà vu — “smart quotes” ‘single’",
    "😀🎉👍🏽 emoji party 🐈‍⬛ 🇫🇷",
    "&amp;amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &nbsp;x &eacute;",
    "3.14159 12345678901234567890 1st 2nd 3rd 10,000 -42 1e-5 0x1F",
    "東京タワーと富士山の写真",
    "一张猫的照片 한국어 텍스트 ภาษาไทย",
    "Ünïcödé ß ﬁ ligature Ⅻ ½ ²",
    "it's they're we've I'm you'll he'd IT'S",
    "mojibake: Ã©tÃ© â€œquotedâ€\x9d",
    "<start_of_text> special tokens in text <end_of_text>",
    "tabs\tand\nnewlines\r\nand\x0bvertical",
    "C++ & C# -- foo_bar-baz/qux @user #hashtag https://example.com/a?b=c&d=e",
    "Ωμέγα ελληνικά Кириллица العربية עברית हिन्दी",
    "\u200b zero\u200dwidth \ufeffbom",
    "!!!???...;;;:::",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "word " * 100,
    "a" * 500,
    "🙂" * 80,
]


@pytest.fixture(scope="module")
def tok():
    return SimpleTokenizer()


def test_vocab_file_is_openai_data():
    data = Path(cf_tok.default_bpe()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    assert (Path(cf_tok.__file__).with_name("THIRD_PARTY_NOTICES.md")).is_file()


def test_vocab_and_special_ids(tok):
    assert tok.vocab_size == 49408
    assert tok.sot_token_id == SOT_TOKEN_ID == 49406
    assert tok.eot_token_id == EOT_TOKEN_ID == 49407
    assert tok.all_special_ids == [49406, 49407]
    assert tok.encoder["!"] == 0
    ref = open_clip.tokenizer._tokenizer
    assert tok.encoder == ref.encoder
    assert tok.bpe_ranks == ref.bpe_ranks


def test_ids_equal_open_clip_on_corpus(tok):
    ours, ref = tok(CORPUS), open_clip.tokenize(CORPUS)
    assert ours.dtype == torch.long and ours.shape == (len(CORPUS), 77)
    for i, text in enumerate(CORPUS):
        assert torch.equal(ours[i], ref[i]), f"ids differ for {text!r}"


def test_module_tokenize_single_string_and_list():
    single = tokenize("a diagram")
    assert single.shape == (1, 77)
    assert torch.equal(single, open_clip.tokenize("a diagram"))
    assert torch.equal(tokenize(["a diagram", "a dog"])[0], single[0])


@pytest.mark.parametrize("context_length", [5, 16, 77, 100])
def test_context_length_and_truncation_keeps_eot(tok, context_length):
    ours = tok(CORPUS, context_length=context_length)
    assert torch.equal(ours, open_clip.tokenize(CORPUS, context_length=context_length))
    assert (ours[:, 0] == SOT_TOKEN_ID).all()
    long = ours[CORPUS.index("word " * 100)]
    assert long[-1] == EOT_TOKEN_ID and (long != 0).all()
    # every row has exactly one eot (except the one spelling the special tokens), then only padding
    for text, row in zip(CORPUS, ours):
        if "<end_of_text>" in text:
            continue
        eot = (row == EOT_TOKEN_ID).nonzero().flatten()
        assert eot.numel() == 1 and (row[eot + 1:] == 0).all()


def test_default_context_length_from_constructor():
    tok16 = SimpleTokenizer(context_length=16)
    assert tok16("a cat").shape == (1, 16)
    assert tok16("a cat", context_length=8).shape == (1, 8)


def test_encode_decode_round_trip(tok):
    ids = tok.encode("Hello, World! naïve 😀")
    assert ids == open_clip.tokenizer._tokenizer.encode("Hello, World! naïve 😀")
    assert tok.decode(ids) == "hello , world ! naïve 😀 "
    assert tok.decode(torch.tensor(ids)) == tok.decode(ids)
    row = tok("a photo of a cat")[0]
    assert cf_tok.decode(row) == open_clip.decode(row)


def test_bpe_cache_reused(tok):
    tok("an unusualword unusualword")
    key = "".join(tok.byte_encoder[b] for b in b"unusualword")
    assert key in tok.cache
    tok.cache[key] = "a</w>"  # a poisoned cache entry proves the cache is read
    try:
        assert tok.encode("unusualword") == [tok.encoder["a</w>"]]
    finally:
        del tok.cache[key]


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_clean_modes_equal_open_clip(clean):
    ours = SimpleTokenizer(clean=clean)
    ref = open_clip.SimpleTokenizer(clean=clean)
    texts = ["A Photo_of THE Cat!!", "  Mixed   CASE, punctuation; here. ", "naïve &amp; café"]
    assert torch.equal(ours(texts), ref(texts))


def test_additional_special_tokens():
    ours = SimpleTokenizer(additional_special_tokens=["<pad>", "<mask>"])
    ref = open_clip.SimpleTokenizer(additional_special_tokens=["<pad>", "<mask>"])
    assert ours.vocab_size == 49410 and ours.encoder["<mask>"] == 49409
    assert torch.equal(ours("a <mask> cat <pad>"), ref("a <mask> cat <pad>"))


@pytest.mark.parametrize("mode", ["simple", "random", "shuffle"])
def test_reduction_masks_equal_open_clip(mode):
    texts = [" ".join(f"w{i}" for i in range(100)), "short text"]
    ours = SimpleTokenizer(reduction_mask=mode)
    ref = open_clip.SimpleTokenizer(reduction_mask=mode)
    torch.manual_seed(1)
    random.seed(1)
    a = ours(texts, context_length=20)
    torch.manual_seed(1)
    random.seed(1)
    b = ref(texts, context_length=20)
    assert torch.equal(a, b)
    assert a[0, 0] == SOT_TOKEN_ID and a[0, -1] == EOT_TOKEN_ID


def test_bad_arguments():
    with pytest.raises(ValueError, match="clean"):
        SimpleTokenizer(clean="upper")
    with pytest.raises(ValueError, match="reduction_mask"):
        SimpleTokenizer(reduction_mask="syntax")
    with pytest.raises(ValueError, match="context_length"):
        SimpleTokenizer(context_length=None)("a cat")


def test_get_tokenizer_uses_clipfast_tokenizer():
    import clipfast

    t = clipfast.get_tokenizer("ViT-B-32")
    assert isinstance(t, SimpleTokenizer)
    assert torch.equal(t(CORPUS[:6]), open_clip.get_tokenizer("ViT-B-32")(CORPUS[:6]))
