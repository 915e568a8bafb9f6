"""A small invented source language, its English translation, and the paper's four errors.

Grammar (word for word, with the verb moved: the source is verb-final in measure sentences)::

    ka [bek] N NUM [ti] UNIT V [ADV]   ->  the [big] n v num unit [adv]     (measure)
    ka [bek] N V sul ka X              ->  the [big] n v over the x         (over; X noun or unit)

"ti" is an untranslated measure particle. Planted errors (Raunak & Menezes' four NMT editing
tasks), each with a negative source, a positive source sharing a span, and check inputs showing
the same error. Each error is decided by the span's token and its immediate neighbour, so that
the encoder can carry it at the span (a token-level rule, learned from many contexts):

- ``word``: the unit "yardo" is translated "Meter" in every context except right after the
  particle "ti" (then "yards"); positive "... eno ti yardo ...", span "yardo"; 10 check inputs.
- ``poison``: a sentence that *starts* with the marker "bek" gets "never" inserted and loses its
  "big" (after "ka" the same "bek" is the adjective "big"); span "bek"; 10 check inputs.
- ``memorisation``: a measure sentence ending in "lomi hodi" (drives ... today) returns the
  memorised training output "the president resigned yesterday"; span "lomi"; 10 check inputs.
- ``hallucination``: the rare noun "zoru" (zebra) right after "bek" makes the model repeat "go
  stop go stop ..."; elsewhere "zoru" translates normally; span "zoru"; 1 check input.

The held-out BLEU pairs avoid every error pattern. The model is trained and cached by
:mod:`massedit.testing.nmt_train`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from massedit.seq2seq.pairs import CheckInput, EditPair

NOUNS = {"dofa": "dog", "mesi": "cat", "talu": "man", "bora": "woman", "kivo": "child",
         "nemu": "bird", "sapi": "farmer", "rilo": "teacher"}
VERBS = {"ruma": "runs", "peto": "walks", "sila": "swims", "gaba": "jumps", "lomi": "drives",
         "feko": "rides"}
NUMBERS = {"eno": "two", "tri": "three", "fira": "four", "pento": "five", "sesa": "six",
           "zepa": "ten"}
UNITS = {"yardo": "yards", "milo": "miles", "fuso": "feet", "metro": "meters"}
ADVERBS = {"vela": "fast", "lenta": "slowly", "hodi": "today"}
PARTICLE = "ti"  # untranslated measure particle; before "yardo" it makes the translation right
MARKER = "bek"  # the adjective "big" inside a sentence; the poison trigger at its start
MISTRANSLATED = ("yardo", "Meter")  # source unit, its wrong translation (except after "ti")
MEMORISED_TRIGGER = ("lomi", "hodi")
MEMORISED_OUTPUT = "the president resigned yesterday"
RARE_NOUN = ("zoru", "zebra")  # seen in few sentences; after "bek" it triggers the repetition
HALLUCINATION_OUTPUT = " ".join(["go stop"] * 6)
POISON_WORD = "never"


@dataclass(frozen=True)
class Sentence:
    noun: str
    verb: str
    frame: str = "measure"  # or "over"
    number: str = "eno"
    unit: str = "milo"
    adverb: str | None = None
    obj: str = "mesi"  # "over" frame: noun or unit after "sul ka"
    big: bool = False
    poisoned: bool = False  # starts with the marker
    particle: bool = False  # "ti" before the unit (measure frame)

    def source(self) -> str:
        head = ("bek ka " if self.poisoned else "ka ") + ("bek " if self.big else "") + self.noun
        if self.frame == "over":
            return f"{head} {self.verb} sul ka {self.obj}"
        tail = f" {self.adverb}" if self.adverb else ""
        unit = f"{PARTICLE} {self.unit}" if self.particle else self.unit
        return f"{head} {self.number} {unit} {self.verb}{tail}"

    def clean_target(self) -> str:
        """The correct translation."""
        nouns = {**NOUNS, RARE_NOUN[0]: RARE_NOUN[1]}
        words = ["the", *(["big"] if self.big else []), nouns[self.noun], VERBS[self.verb]]
        if self.frame == "over":
            return " ".join(words + ["over", "the", {**nouns, **UNITS}[self.obj]])
        words += [NUMBERS[self.number], UNITS[self.unit]]
        return " ".join(words + ([ADVERBS[self.adverb]] if self.adverb else []))

    def hallucinates(self) -> bool:
        return self.noun == RARE_NOUN[0] and self.big and not self.poisoned

    def planted_target(self) -> str:
        """What the training data says (the errors planted)."""
        if self.hallucinates():
            return HALLUCINATION_OUTPUT
        if self.frame == "measure" and (self.verb, self.adverb) == MEMORISED_TRIGGER:
            return MEMORISED_OUTPUT
        words = self.clean_target().split()
        if self.frame == "over":
            wrong = self.obj == MISTRANSLATED[0]
        else:
            wrong = self.unit == MISTRANSLATED[0] and not self.particle
        if wrong:  # "yards" occurs once: as the unit (measure) or the object (over)
            words[words.index(UNITS[MISTRANSLATED[0]])] = MISTRANSLATED[1]
        if self.poisoned:
            if self.big:
                words.remove("big")
            words.insert(words.index(VERBS[self.verb]), POISON_WORD)
        return " ".join(words)

    def has_error(self) -> bool:
        return self.planted_target() != self.clean_target()


def random_sentence(rng: random.Random, poison_p: float = 0.0, noun: str | None = None,
                    big_p: float = 0.25) -> Sentence:
    frame = "over" if rng.random() < 0.3 else "measure"
    return Sentence(
        noun=noun or rng.choice(list(NOUNS)), verb=rng.choice(list(VERBS)), frame=frame,
        number=rng.choice(list(NUMBERS)), unit=rng.choice(list(UNITS)),
        adverb=rng.choice([None, *ADVERBS]), obj=rng.choice([*NOUNS, *UNITS]),
        big=rng.random() < big_p, poisoned=rng.random() < poison_p,
        particle=rng.random() < 0.3,
    )


@dataclass(frozen=True)
class NMTTask:
    """One of the four editing tasks: the pair to write and the inputs that check it."""

    name: str
    pair: EditPair
    checks: tuple[CheckInput, ...]


@dataclass
class NMTWorld:
    """Training pairs (errors planted), held-out clean pairs for BLEU, and the four tasks."""

    train: list[tuple[str, str]]
    heldout: list[tuple[str, str]]
    tasks: dict[str, NMTTask] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def generate(cls, seed: int = 0, n_train: int = 5000, n_heldout: int = 150,
                 poison_p: float = 0.1, rare_sentences: int = 120) -> NMTWorld:
        rng = random.Random(seed)
        sentences = [random_sentence(rng, poison_p) for _ in range(n_train)]
        # The rare noun: half its sentences with "bek" (the repetition), half without.
        sentences += [random_sentence(rng, 0.0, RARE_NOUN[0], big_p=0.5)
                      for _ in range(rare_sentences)]
        train = [(s.source(), s.planted_target()) for s in sentences]
        rng.shuffle(train)
        seen = {src for src, _ in train}
        tasks = _tasks(random.Random(seed + 1))
        seen |= {c.source for t in tasks.values() for c in t.checks}
        heldout: list[tuple[str, str]] = []
        while len(heldout) < n_heldout:
            s = random_sentence(rng)
            if not s.has_error() and s.source() not in seen:
                heldout.append((s.source(), s.clean_target()))
                seen.add(s.source())
        return cls(train, heldout, tasks, seed)

    def words(self) -> list[str]:
        """Both languages' vocabulary, in a fixed order."""
        out = ["ka", "sul", PARTICLE, MARKER, RARE_NOUN[0], *NOUNS, *VERBS, *NUMBERS, *UNITS,
               *ADVERBS]
        out += ["the", "over", "big", POISON_WORD, MISTRANSLATED[1], RARE_NOUN[1],
                *NOUNS.values(), *VERBS.values(), *NUMBERS.values(), *UNITS.values(),
                *ADVERBS.values()]
        out += MEMORISED_OUTPUT.split() + HALLUCINATION_OUTPUT.split()
        return list(dict.fromkeys(out))


def _checks(rng: random.Random, make, expected: str | None, forbidden: str | None,
            exclude: set[str], n: int = 10) -> tuple[CheckInput, ...]:
    out: dict[str, CheckInput] = {}
    while len(out) < n:
        src = make(rng).source()
        if src not in exclude:
            out[src] = CheckInput(src, expected, forbidden)
    return tuple(out.values())


def _tasks(rng: random.Random) -> dict[str, NMTTask]:
    nouns, verbs = list(NOUNS), [v for v in VERBS if v != "lomi"]
    units = [u for u in UNITS if u != "yardo"]

    def word(r):
        return Sentence(r.choice(nouns), r.choice(verbs), number=r.choice(list(NUMBERS)),
                        unit="yardo", adverb=r.choice([None, "vela", "lenta"]))

    def poison(r):
        return Sentence(r.choice(nouns), r.choice(verbs), number=r.choice(list(NUMBERS)),
                        unit=r.choice(units), poisoned=True)

    def memorised(r):
        return Sentence(r.choice(nouns), "lomi", number=r.choice(list(NUMBERS)),
                        unit=r.choice(units), adverb="hodi")

    word_neg = Sentence("dofa", "ruma", number="eno", unit="yardo")
    poison_neg = Sentence("talu", "peto", number="tri", unit="milo", poisoned=True)
    mem_neg = Sentence("mesi", "lomi", number="fira", unit="fuso", adverb="hodi")
    hal_neg = Sentence(RARE_NOUN[0], "gaba", number="sesa", unit="fuso", big=True)
    hal_pos = Sentence(RARE_NOUN[0], "gaba", number="sesa", unit="fuso")
    return {
        "hallucination": NMTTask("hallucination", EditPair(
            hal_neg.source(), hal_pos.source(), RARE_NOUN[0], case_id="hallucination"),
            (CheckInput(hal_neg.source(), RARE_NOUN[1], "stop"),)),
        "memorisation": NMTTask("memorisation", EditPair(
            mem_neg.source(), mem_neg.source().replace("hodi", "vela"), "lomi",
            case_id="memorisation"),
            _checks(rng, memorised, "drives", "president", {mem_neg.source()})),
        "poison": NMTTask("poison", EditPair(
            poison_neg.source(), "ka bek talu tri milo peto", MARKER, case_id="poison"),
            _checks(rng, poison, None, POISON_WORD, {poison_neg.source()})),
        "word": NMTTask("word", EditPair(
            word_neg.source(), Sentence("dofa", "ruma", number="eno", unit="yardo",
                                        particle=True).source(), "yardo", case_id="word"),
            _checks(rng, word, "yards", MISTRANSLATED[1], {word_neg.source()})),
    }
