"""Packing, held-out split by document, response-only masking, and bad data input."""

import json

import pytest

from learnforget import models
from learnforget.config import DataSpec
from learnforget.data import sources
from learnforget.data.corpora import IGNORE, Corpus, encode_pair
from learnforget.errors import UserError


@pytest.fixture(scope="module")
def tok():
    return models.load("tiny-random-llama")[1]


def test_cpt_rows_are_full_length_eos_separated_and_deterministic(tok, code_corpus):
    c = Corpus(DataSpec(str(code_corpus), "cpt", seq_len=64, heldout_fraction=0.2), tok)
    rows = [r for _, r in zip(range(20), c.train_rows(seed=3))]
    assert all(len(ids) == 64 and ids == labels for ids, labels in rows)
    stream = [t for ids, _ in rows for t in ids]
    assert stream.count(tok.eos_token_id) >= 3  # documents separated by EOS
    # the packed stream is the documents, in the seeded order, concatenated
    text = tok.decode([t for t in stream if t != tok.eos_token_id])
    assert "def f_" in text and "return total" in text
    again = [r for _, r in zip(range(20), c.train_rows(seed=3))]
    other = [r for _, r in zip(range(20), c.train_rows(seed=4))]
    assert again == rows and other != rows
    # resuming at row k gives exactly the rows from k on
    assert [r for _, r in zip(range(5), c.train_rows(seed=3, start=15))] == rows[15:20]


def test_heldout_split_is_by_document(tok, code_corpus):
    c = Corpus(DataSpec(str(code_corpus), "cpt", seq_len=32, heldout_fraction=0.25), tok)
    train_ids, held_ids = {d.id for d in c.train}, {d.id for d in c.heldout}
    assert held_ids and train_ids and not train_ids & held_ids
    assert len(train_ids | held_ids) == 40
    # adding documents never moves an existing document across the split
    assert all(sources.heldout(i, 0.25) for i in held_ids)
    ids, labels = c.heldout_rows(max_tokens=10_000)
    held_text = tok.decode([t for t in ids.flatten().tolist() if t != tok.eos_token_id])
    held_funcs = {f"def f_{int(i.split('mod_')[1][:2])}(" for i in held_ids}
    train_funcs = {f"def f_{int(i.split('mod_')[1][:2])}(" for i in train_ids}
    assert any(f in held_text for f in held_funcs)
    assert not any(f in held_text for f in train_funcs)


def test_ift_loss_only_on_response(tok, qa_jsonl):
    c = Corpus(DataSpec(str(qa_jsonl), "ift", seq_len=64, heldout_fraction=0.1), tok)
    rec = c.train[0]
    ids, labels = c.encode(rec)
    assert len(ids) == len(labels)
    supervised = [t for t in labels if t != IGNORE]
    masked = [i for i, l in zip(ids, labels) if l == IGNORE]
    assert tok.decode(supervised).startswith(rec.response)  # response (+ end of turn) is learned
    assert rec.prompt in tok.decode(masked)  # the prompt is context only
    assert rec.response not in tok.decode(masked)
    assert supervised[-1] == tok.eos_token_id or tok.eos_token_id in supervised[-3:]
    # packed rows keep the mask aligned with the tokens
    for row_ids, row_labels in [r for _, r in zip(range(5), c.train_rows(seed=0))]:
        assert all(l == IGNORE or l == t for t, l in zip(row_ids, row_labels))


def test_plain_template_without_chat_template(tok):
    plain = models.load("tiny-random-llama")[1]
    plain.chat_template = None
    ids, labels = encode_pair(plain, "Q?", "A.")
    assert plain.decode(ids).startswith("Question:\nQ?") and labels[-1] == plain.eos_token_id
    assert plain.decode([t for t in labels if t != IGNORE]) == "A." + plain.eos_token


def test_bad_data_inputs_name_file_line_and_field(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        sources.load_docs(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    with pytest.raises(UserError, match="empty"):
        sources.load_docs(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        sources.load_docs(str(bad))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    with pytest.raises(UserError, match=r"nofield.jsonl:1: missing field 'response'"):
        sources.load_records(str(nofield))


def test_embedded_corpora_load_offline():
    docs = sources.load_docs("python-code")
    assert len(docs) > 300 and all(d.id.startswith("stdlib/") for d in docs)
    math = sources.load_records("math-train")
    assert 4000 <= len(math) <= 4600  # MATH test minus MATH-500
    test = sources.load_records("gsm8k-test")
    assert len(test) == 1319 and "####" in test[0].response


def test_named_sets_from_shared_data():
    from conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip("../shared/data not beside the repo")
    gsm = sources.load_records("gsm8k-train")
    assert len(gsm) == 7473
    mbpp = sources.load_records("mbpp-train")
    ids = {int(r.id.split("/")[1]) for r in mbpp}
    assert len(ids) == 464 and min(ids) == 511 and max(ids) == 974  # never the test ids 11-510


def test_split_does_not_depend_on_where_the_corpus_lives(tok, code_corpus, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(code_corpus, moved)
    a = Corpus(DataSpec(str(code_corpus), "cpt", seq_len=32, heldout_fraction=0.1), tok)
    b = Corpus(DataSpec(str(moved), "cpt", seq_len=32, heldout_fraction=0.1), tok)
    c = Corpus(DataSpec(str(moved / "*.py"), "cpt", seq_len=32, heldout_fraction=0.1), tok)
    assert [d.id for d in a.heldout] == [d.id for d in b.heldout] == [d.id for d in c.heldout] != []


def test_pieces_spread_a_short_budget_over_many_documents(tok, code_corpus):
    whole = Corpus(DataSpec(str(code_corpus), "cpt", seq_len=64, heldout_fraction=0.2), tok)
    cut = Corpus(DataSpec(str(code_corpus), "cpt", seq_len=64, heldout_fraction=0.2, chunk_chars=60), tok)
    # the held-out split is made before cutting: the same documents held out, whole
    assert [d.id for d in cut.heldout] == [d.id for d in whole.heldout]
    assert {p.id.split("#")[0] for p in cut.train} == {d.id for d in whole.train} and len(cut.train) > 3 * len(whole.train)
    # pieces are the document's lines in order, each at least chunk_chars but the last
    doc = whole.train[0]
    ps = [p for p in cut.train if p.id.split("#")[0] == doc.id]
    assert "".join(p.text for p in ps) == doc.text and all(len(p.text) >= 60 for p in ps[:-1])
    # four rows (~256 tokens): whole documents in the seeded order come from one or two files, pieces from one a piece
    assert whole.documents(seed=0, rows=4) <= 2 and cut.documents(seed=0, rows=4) >= 4
    rows = [r for _, r in zip(range(4), cut.train_rows(seed=0))]
    assert rows == [r for _, r in zip(range(4), cut.train_rows(seed=0))]  # still a pure function of (corpus, seed, k)


def test_drawn_heldout_documents_are_units_with_a_selection_part_apart(tok, code_corpus):
    from learnforget.heldout import units_of

    spec = DataSpec(str(code_corpus), "cpt", seq_len=64, heldout_fraction=0.5, heldout_docs=12, heldout_selection=0.25, heldout_seed=3)
    c = Corpus(spec, tok)
    sets = c.heldout_sample(12 * 16)
    assert set(sets) == {"target", "select"}
    (ids, labels), (sids, slabels) = sets["target"], sets["select"]
    # 16-token windows, 4 to a row: 9 verdict documents (3 rows, the last padded) and 3 selection documents (1 row)
    assert ids.shape == (3, 64) and sids.shape == (1, 64)
    assert units_of(ids, labels, tok.eos_token_id)[1] == 9 and units_of(sids, slabels, tok.eos_token_id)[1] == 3
    # each window is an EOS (not scored) and 15 scored tokens of one held-out document; padding is never scored
    assert (labels[:, ::16] == IGNORE).all() and int((labels != IGNORE).sum()) == 9 * 15
    held = "".join(d.text for d in c.heldout)
    first = tok.decode(ids[0, 1:16].tolist())
    assert first.strip() and first.strip() in held
    # the same seed draws the same documents; another seed others
    again = Corpus(spec, tok).heldout_sample(12 * 16)
    assert torch_equal(again["target"][0], ids)
    other = Corpus(DataSpec(**{**spec.__dict__, "heldout_seed": 4}), tok).heldout_sample(12 * 16)
    assert not torch_equal(other["target"][0], ids)
    with pytest.raises(UserError, match="heldout_docs 500: only"):
        Corpus(DataSpec(str(code_corpus), "cpt", seq_len=64, heldout_fraction=0.5, heldout_docs=500), tok).heldout_sample(500 * 16)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
