"""Tests for clip_frozen.py's tokenizers: bytes, BPE on written merges, and OpenAI's ids with the released
merges."""

import gzip

import pytest

from clip_frozen import (
    BPE_MERGES,
    BPETokenizer,
    ByteTokenizer,
    bytes_to_unicode,
    make_tokenizer,
    tokenizer_kind,
)


def test_byte_tokenizer():
    tok = ByteTokenizer(context_length=8)
    tokens, mask = tok(["ab", "abcdefghij"])
    assert tokens[0].tolist() == [257, 98, 99, 258, 0, 0, 0, 0]
    assert mask[0].tolist() == [True] * 4 + [False] * 4
    assert tokens[1].tolist() == [257, *range(98, 104), 258] and mask[1].all()  # end kept last
    assert tok.end_token == tok.vocab_size - 1 == tokens.max()
    with pytest.raises(ValueError, match=r"'abcdefghij'.*context length 8"):
        ByteTokenizer(8, truncate=False)(["abcdefghij"])
    with pytest.raises(ValueError, match="empty"):
        tok(["ok", "  "])
    with pytest.raises(TypeError, match="list of captions"):
        tok("a red circle")


def write_merges(path, merges):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def test_bpe_tokenizer_on_written_merges(tmp_path):
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == chr(256 + 32)  # space -> 'Ġ'
    path = tmp_path / "merges.txt.gz"
    write_merges(path, [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>")])
    tok = BPETokenizer(str(path), context_length=12)
    start, end = 512 + 4, 512 + 5  # 256 bytes, 256 bytes + '</w>', 4 merges, then start/end
    assert (tok.start_token, tok.end_token, tok.vocab_size) == (start, end, 518)
    base = list(table.values())
    hello = 512 + 3
    world = [base.index(c) for c in "worl"] + [256 + base.index("d")]
    tokens, mask = tok(["  HELLO\n\tWorld!", "hello &amp;"])
    assert tokens[0, :mask[0].sum()].tolist() == [start, hello, *world, 256 + base.index("!"), end]
    assert tokens[1, :mask[1].sum()].tolist() == [start, hello, 256 + base.index("&"), end]
    assert tok.encode("it's") == [base.index("i"), 256 + base.index("t"), base.index("'"),
                                  256 + base.index("s")]
    tokens, mask = tok(["hello " * 20])
    assert mask.all() and tokens[0, -1] == end and tokens.max() == end


VOCAB = BPE_MERGES  # OpenAI's merges (MIT), shipped in assets/tokenizer
# Reference ids from OpenAI's tokenizer (its SimpleTokenizer, as packaged in open-clip-torch 3.3.0, run
# once on the file above), each case for one step of the pipeline.
OPENAI_IDS = {
    "A Photo of a CAT!": [320, 1125, 539, 320, 2368, 256],  # lower case; '!' a word of its own
    "it's 2 dogs &amp; 13 cats": [585, 568, 273, 3255, 261, 272, 274, 3989],  # 's, html, one digit each
    "don't   stop\n\tbelieving": [847, 713, 1691, 19551],  # 't; runs of whitespace
    "hello_world  x-ray": [3306, 318, 1002, 343, 268, 3077],  # '_' and '-' split words
    "unCLIP's zero-shot ImageNet": [569, 9289, 568, 5848, 268, 2000, 2414, 1024, 875],  # several pieces
    "naïve café 🙂": [1097, 35689, 563, 15304, 14860],  # UTF-8 bytes through the byte table
    "½kg of flour": [33613, 7817, 539, 18592],  # a numeral (not only 0-9) is a word apart from letters
    "a 10m² room, chapter Ⅻ": [320, 272, 271, 332, 41175, 1530, 267, 6014, 158, 227, 375],
    "an orange circle to the right of a green triangle on a gray background": [  # a Shapes caption
        550, 4287, 7117, 531, 518, 1155, 539, 320, 1901, 14615, 525, 320, 7048, 5994],
}


def test_bpe_gives_openais_ids_with_the_released_merges():
    tok = BPETokenizer(VOCAB)
    assert (tok.start_token, tok.end_token, tok.vocab_size, tok.context_length) == (
        49406, 49407, 49408, 77)
    tokens, mask = tok(["a photo of a cat"])
    assert tokens.shape == (1, 77)
    assert tokens[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert mask[0].tolist() == [True] * 7 + [False] * 70 and not tokens[0, 7:].any()
    for caption, ids in OPENAI_IDS.items():
        assert tok.encode(caption) == ids, caption


def test_make_tokenizer_names_the_two_tokenizers_and_tokenizer_kind_reads_a_vocabulary():
    bpe, byte = make_tokenizer("bpe", 30), make_tokenizer("byte", 30, truncate=False)
    assert isinstance(bpe, BPETokenizer) and (bpe.vocab_size, bpe.end_token, bpe.context_length) == (
        49408, 49407, 30)
    assert bpe(["a blue square"])[0][0, :5].tolist() == [49406, 320, 1746, 3999, 49407]  # OpenAI's ids
    assert isinstance(byte, ByteTokenizer) and (byte.vocab_size, byte.truncate) == (259, False)
    assert (tokenizer_kind(259), tokenizer_kind(49408)) == ("byte", "bpe")
    with pytest.raises(ValueError, match="bpe, byte"):
        make_tokenizer("BPE", 30)
