"""SynGen's parse-based grouping on hand-built dependency trees (no spaCy needed)."""
from attention_align.guidance.dependency import parse_selection
from attention_align.guidance.tokens import Word


class Tok:
    def __init__(self, i, text, pos, dep):
        self.i, self.text, self.pos_, self.dep_, self.children = i, text, pos, dep, []


def parse(spec):
    """spec: [(text, POS, dep, head index or None)] → tokens with children, as spaCy would give them."""
    toks = [Tok(i, t, p, d) for i, (t, p, d, _) in enumerate(spec)]
    for tok, (_, _, _, head) in zip(toks, spec):
        if head is not None:
            toks[head].children.append(tok)
    return toks


def words_for(doc):
    seen, out = {}, []
    for t in doc:
        seen[t.text] = seen.get(t.text, 0) + 1
        out.append(Word(t.text, (t.i + 1,), seen[t.text]))
    return out


def groups(doc):
    sel = parse_selection(doc, words_for(doc))
    return [" ".join(w.label for w in g) for g in sel.groups], [w.label for w in sel.entities]


def test_coordinated_adjectives_and_two_entities():
    doc = parse([("a", "DET", "det", 2), ("checkered", "ADJ", "amod", 2), ("bowl", "NOUN", "ROOT", None),
                 ("on", "ADP", "prep", 2), ("a", "DET", "det", 8), ("red", "ADJ", "amod", 8),
                 ("and", "CCONJ", "cc", 5), ("blue", "ADJ", "conj", 5), ("table", "NOUN", "pobj", 3)])
    assert groups(doc) == (["checkered bowl", "red blue table"], ["bowl", "table"])


def test_copula_and_relative_clause():
    doc = parse([("the", "DET", "det", 1), ("dog", "NOUN", "nsubj", 2), ("is", "AUX", "ROOT", None),
                 ("red", "ADJ", "acomp", 2)])
    assert groups(doc) == (["red dog"], ["dog"])
    doc = parse([("a", "DET", "det", 1), ("dog", "NOUN", "ROOT", None), ("that", "PRON", "nsubj", 3),
                 ("is", "AUX", "relcl", 1), ("red", "ADJ", "acomp", 3)])
    assert groups(doc) == (["red dog"], ["dog"])


def test_every_relative_clause_is_used_not_only_the_first():
    """The official verb extractor returns after the first noun; "a cat that is blue" would be lost."""
    doc = parse([("a", "DET", "det", 1), ("dog", "NOUN", "ROOT", None), ("that", "PRON", "nsubj", 3),
                 ("is", "AUX", "relcl", 1), ("red", "ADJ", "acomp", 3), ("and", "CCONJ", "cc", 1),
                 ("a", "DET", "det", 7), ("cat", "NOUN", "conj", 1), ("that", "PRON", "nsubj", 9),
                 ("is", "AUX", "relcl", 7), ("blue", "ADJ", "acomp", 9)])
    assert groups(doc) == (["red dog", "blue cat"], ["dog", "cat"])


def test_adverbs_compounds_and_repeated_words():
    doc = parse([("a", "DET", "det", 3), ("very", "ADV", "advmod", 2), ("tall", "ADJ", "amod", 3),
                 ("tree", "NOUN", "ROOT", None), ("near", "ADP", "prep", 3), ("a", "DET", "det", 7),
                 ("coffee", "NOUN", "compound", 7), ("mug", "NOUN", "pobj", 4)])
    assert groups(doc) == (["tall very tree", "coffee mug"], ["tree", "mug"])     # a compound is no subject
    doc = parse([("a", "DET", "det", 2), ("red", "ADJ", "amod", 2), ("car", "NOUN", "ROOT", None),
                 ("and", "CCONJ", "cc", 2), ("a", "DET", "det", 6), ("red", "ADJ", "amod", 6),
                 ("bench", "NOUN", "conj", 2)])
    assert groups(doc)[0] == ["red car", "red#2 bench"]
