"""The knowledge benchmark: invented documents whose facts no model can know, and four-option questions whose
answers are only in them, in the QuALITY layout (`builtin:knowledge-dev`, `builtin:knowledge-test`).

Each document is the history of an invented organisation: its founder (with a birthplace and a trade told in
another paragraph), its town, a hall built in a later year, a successor, a flood or fire that moved it to a
second town, a commission for another invented organisation, its members and its yearly fair. Every fact is
written with one of several surface forms, the paragraphs come in varied orders and the document in one of
several registers, so no two documents read alike. Names are drawn from syllables, unique across both
splits, so a fact learned from one split never answers a question of the other.

Questions ask single facts and, for a quarter of them, two facts told in different sentences joined (the
founder's birthplace, the founder's trade, the birthplace of the person the successor followed): the relations
between entities that EntiGraph writes about. Those are marked `difficult`. Options are of the answer's type.
A single-fact question has one distractor of that type from the same document (so recognising a name from
the document is not enough); the other distractors, and all of a joined question's, are values from the
split's other documents, which a model trained on the split has read too. The gold letter is spread evenly
over A-D.

Pure and seeded: `generate(seed)` returns the same records on every machine. Regenerate the shipped files with
`python -m ray_entigraph.demo.knowledge` (a test checks the shipped files equal the generator's output).
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

SEED = 20261129
# 20 documents of 12 questions: Raw CPT on all 40 documents of the first version (6 questions each) stayed at
# chance after 6 epochs on 2 cores (the documents are alike, and a 135M model kept 40 of them apart too slowly),
# while 20 documents rose from 20% to 33% in 10 epochs (docs/evaluation.md)
DOCS_PER_SPLIT = 20
SINGLE_PER_DOC, JOINED_PER_DOC = 9, 3
QUESTIONS_PER_DOC = SINGLE_PER_DOC + JOINED_PER_DOC
SPLITS = ("dev", "test")
HERE = Path(__file__).resolve().parent


def split_path(split: str) -> Path:
    return HERE / f"knowledge_{split}.jsonl"


# ------------------------------------------------------------------------------------------------ invented names

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "th", "tr",
           "v", "w", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ia", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "nd", "rn"]
_PLACE_ENDS = ["ford", "wick", "mere", "holt", "stead", "by", "haven", "combe", "moor", "ness", "dale", "port"]


class Names:
    """Invented names, each used once across the whole benchmark."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _syllables(self, n: int) -> str:
        r = self.rng
        return "".join(r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS) for _ in range(n))

    def _fresh(self, make) -> str:
        for _ in range(1000):
            name = make()
            key = name.casefold()
            if key not in self.used and 4 <= len(name) <= 16:
                self.used.add(key)
                return name
        raise RuntimeError("ran out of invented names")

    def word(self, syllables: int = 2) -> str:
        return self._fresh(lambda: self._syllables(syllables).capitalize())

    def person(self) -> str:
        first = self._fresh(lambda: self._syllables(self.rng.choice([1, 2])).capitalize())
        last = self._fresh(lambda: self._syllables(2).capitalize())
        return f"{first} {last}"

    def town(self) -> str:
        return self._fresh(lambda: (self._syllables(1) + self.rng.choice(_PLACE_ENDS)).capitalize())


_KINDS = ["Society", "Guild", "Company", "Brotherhood", "Academy", "Cooperative", "Trust", "Fellowship"]
_CRAFTS = [("lanterns", "lantern-makers"), ("rope", "rope-makers"), ("bells", "bell-founders"),
           ("salt", "salt-panners"), ("sea charts", "chart-engravers"), ("clocks", "clockmakers"),
           ("barrels", "coopers"), ("stained glass", "glaziers"), ("sailcloth", "sail-weavers"),
           ("paper", "paper-makers"), ("telescopes", "lens-grinders"), ("violins", "luthiers"),
           ("printed maps", "map-printers"), ("cheese", "cheesemakers"), ("fishing nets", "net-makers"),
           ("candles", "chandlers"), ("pottery", "potters"), ("tiles", "tile-makers"), ("boats", "boatwrights"),
           ("dyes", "dyers")]
_TRADES = ["a cooper", "a schoolteacher", "a ferryman", "a blacksmith", "a surveyor", "a printer", "a midwife",
           "a weaver", "an apothecary", "a tanner", "a stonemason", "a harbour pilot", "a bookbinder", "a miller",
           "a locksmith", "a shepherd"]
_DISASTERS = ["flood", "fire", "storm", "landslide"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_HALL_WORDS = ["Hall", "House", "Exchange", "Tower", "Yard", "Lodge"]
_KIN = ["niece", "apprentice", "nephew", "former rival", "daughter", "son", "pupil"]
_CLIENT_KINDS = ["Lighthouse Board", "Harbour Commission", "Cathedral Chapter", "Rail Company", "Observatory",
                 "Town Council", "Naval Yard", "University"]
_COMMISSION_THINGS = ["{n} {craft} for the {client}", "an order of {n} {craft} placed by the {client}"]


@dataclass
class World:
    """The facts of one document."""
    org: str
    short: str  # "the Society"
    craft: str
    makers: str
    founded: int
    founder: str
    birthplace: str
    trade: str
    town: str
    region: str
    hall: str
    hall_year: int
    successor: str
    kin: str
    handover: int
    disaster: str
    disaster_year: int
    new_town: str
    client: str
    client_town: str
    commission_n: int
    commission_year: int
    members: int
    fair_month: str
    author: str


def make_world(rng: random.Random, names: Names) -> World:
    craft, makers = rng.choice(_CRAFTS)
    kind = rng.choice(_KINDS)
    stem = names.word(rng.choice([2, 3]))
    org = f"{stem} {kind} of {craft.title()}" if rng.random() < 0.3 else f"{stem} {kind}"
    founded = rng.randrange(1520, 1880)
    hall_year = founded + rng.randrange(8, 60)
    handover = founded + rng.randrange(15, 45)
    disaster_year = max(hall_year, handover) + rng.randrange(5, 70)
    commission_year = founded + rng.randrange(10, 120)
    return World(
        org=f"the {org}", short=f"the {kind}", craft=craft, makers=makers, founded=founded,
        founder=names.person(), birthplace=names.town(), trade=rng.choice(_TRADES), town=names.town(),
        region=names.word(2), hall=f"{names.word(2)} {rng.choice(_HALL_WORDS)}", hall_year=hall_year,
        successor=names.person(), kin=rng.choice(_KIN), handover=handover, disaster=rng.choice(_DISASTERS),
        disaster_year=disaster_year, new_town=names.town(), client=f"{names.word(2)} {rng.choice(_CLIENT_KINDS)}",
        client_town=names.town(), commission_n=rng.choice([12, 24, 36, 40, 48, 60, 72, 96, 120, 144, 200, 300]),
        commission_year=commission_year, members=rng.randrange(19, 950), fair_month=rng.choice(_MONTHS),
        author=names.person())


# ------------------------------------------------------------------------------------------------ surface forms

def _fields(w: World) -> dict:
    return {**vars(w), "short_l": w.short.removeprefix("the ").lower(), "founder_first": w.founder.split()[0]}


def _pick(rng: random.Random, forms: list[str], w: World) -> str:
    return rng.choice(forms).format(**_fields(w))


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def paragraphs(rng: random.Random, w: World) -> list[str]:
    """The document's paragraphs, each fact in one of several phrasings; the founder's birthplace and trade are
    told apart from the founding, so questions about them join two facts."""
    origin = _pick(rng, [
        "{org} was founded in {founded} in the town of {town}, in the {region} valley, by {founder}.",
        "In {founded}, {founder} gathered a handful of {makers} in {town} and founded {org}.",
        "{founder} founded {org} at {town} in {founded}; at first its members met in a rented loft.",
        "The story of {org} begins in {founded}, when {founder} set up a workshop for {makers} in {town}, a "
        "market town of the {region} valley.",
    ], w)
    craft = _pick(rng, [
        "Its members made {craft}, and the {short_l}'s mark was stamped on everything they sold.",
        "From the start its trade was {craft}; by law only its members could sell {craft} in the valley.",
        "The {short_l} existed to make {craft}, which its {makers} sold at the weekly market.",
    ], w)
    founder = _pick(rng, [
        "{founder} had been born in {birthplace} and worked as {trade} before turning to the craft.",
        "Before any of this, {founder} was {trade} in {birthplace}, the village where {founder_first} was born.",
        "Born in {birthplace}, {founder} spent twenty years as {trade} and only then learned the trade of the "
        "{makers}.",
    ], w)
    hall = _pick(rng, [
        "In {hall_year} the members built {hall}, which served as workshop, school and meeting room.",
        "{hall} was completed in {hall_year}, paid for by a levy on every sale.",
        "The {short_l} moved into its own building, {hall}, in {hall_year}.",
    ], w)
    succession = _pick(rng, [
        "{founder} led the {short_l} until {handover}, when the leadership passed to {successor}, the founder's "
        "{kin}.",
        "In {handover}, {successor}, who was the founder's {kin}, took over the running of the {short_l}.",
        "The founder's {kin}, {successor}, became head of the {short_l} in {handover}.",
    ], w)
    disaster = _pick(rng, [
        "A {disaster} in {disaster_year} destroyed the workshops, and the {short_l} moved to {new_town}, where it "
        "remains.",
        "After the great {disaster} of {disaster_year}, the members left for {new_town} and rebuilt there.",
        "The {disaster} of {disaster_year} ruined {hall}; within a year the {short_l} had resettled in {new_town}.",
    ], w)
    commission = _pick(rng, [
        "Its best-known commission came in {commission_year}: {commission_n} {craft} for the {client} of "
        "{client_town}.",
        "In {commission_year} the {client} of {client_town} ordered {commission_n} {craft} from the {short_l}, "
        "its largest order.",
        "The {short_l}'s largest order, {commission_n} {craft}, was placed in {commission_year} by the {client} "
        "in {client_town}.",
    ], w)
    today = _pick(rng, [
        "Today {org} has {members} members and holds its fair every {fair_month}.",
        "It now counts {members} members; its yearly fair takes place each {fair_month}.",
        "Every {fair_month} its {members} members open their workshops to visitors for the annual fair.",
    ], w)
    order = rng.choice([[origin, founder, craft, hall, succession, commission, disaster, today],
                        [origin, craft, founder, succession, hall, disaster, commission, today],
                        [today, origin, founder, hall, craft, commission, succession, disaster],
                        [origin, hall, founder, craft, disaster, succession, commission, today]])
    # two to three facts per paragraph, the grouping varied too
    groups, i = [], 0
    while i < len(order):
        n = rng.choice([2, 2, 3])
        groups.append(" ".join(_cap(s) for s in order[i:i + n]))
        i += n
    return groups


def title_for(rng: random.Random, w: World) -> str:
    org = w.org.removeprefix("the ")
    return rng.choice([f"The {org}", f"A History of the {org}", f"The {org} of {w.new_town}",
                       f"{w.makers.capitalize()} of {w.town}: the {org}", f"Notes on the {org}"])


# ------------------------------------------------------------------------------------------------ questions

def _years_near(rng: random.Random, gold: int, exclude: set[int], n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        y = gold + rng.choice([-1, 1]) * rng.randrange(3, 40)
        if y not in exclude and y not in out:
            out.append(y)
    return out


def _options(rng: random.Random, gold, same_doc: list, pool: list, n_slot: int):
    """Four options: the gold, one value of its type from the document (when it has one), the rest from the
    pool; returned in an order that puts the gold at `n_slot`."""
    distractors: list = []
    for cand in same_doc:
        if cand != gold and cand not in distractors:
            distractors.append(cand)
            break
    for cand in rng.sample(pool, len(pool)):
        if len(distractors) == 3:
            break
        if cand != gold and cand not in distractors:
            distractors.append(cand)
    rng.shuffle(distractors)
    opts = distractors[:n_slot] + [gold] + distractors[n_slot:]
    return [str(o) for o in opts], n_slot


def questions_for(rng: random.Random, w: World, pools: dict[str, list], slots: list[int]) -> list[dict]:
    """QUESTIONS_PER_DOC questions: SINGLE_PER_DOC single facts and JOINED_PER_DOC joins of two facts, gold
    letters from `slots`."""
    single = [
        ("In what year was {org} founded?", w.founded, [w.hall_year, w.handover],
         _years_near(rng, w.founded, {w.hall_year, w.handover}, 3)),
        ("Who founded {org}?", w.founder, [w.successor], pools["person"]),
        ("In which town was {org} founded?", w.town, [w.new_town, w.birthplace], pools["town"]),
        ("What does {org} make?", w.craft, [], pools["craft"]),
        ("How many members does {org} have today?", w.members, [w.commission_n],
         [max(5, w.members + d) for d in (-117, -41, 63, 158, 209)]),
        ("In which month does {org} hold its yearly fair?", w.fair_month, [], pools["month"]),
        ("What is the name of the building {org} built for itself?", w.hall, [], pools["hall"]),
        ("In what year did the disaster strike that made {org} move?", w.disaster_year, [w.commission_year],
         _years_near(rng, w.disaster_year, {w.commission_year}, 3)),
        ("How many {craft} did the {client} order from {org}?", w.commission_n, [w.members],
         [x for x in (12, 24, 36, 40, 48, 60, 72, 96, 120, 144, 200, 300) if x != w.commission_n]),
    ]
    single += [
        ("Where did {org} move after the {disaster} of {disaster_year}?", w.new_town, [w.town], pools["town"]),
        ("Who took over {org} from its founder?", w.successor, [w.founder], pools["person"]),
        ("How was the person who succeeded the founder of {org} related to the founder?", w.kin, [], _KIN),
        ("In which town is the organisation that ordered {commission_n} {craft} from {org}?", w.client_town,
         [w.town], pools["town"]),
    ]
    # two facts joined, told in different sentences: who founded it, and where or what that person was
    # Their options come from other documents only: with a town of the same document among them, the bundled
    # model with the document in context picked it over the birthplace (open-book 24% on those questions).
    joined = [
        ("In which town was the founder of {org} born?", w.birthplace, [], pools["town"]),
        ("What was the trade of the person who founded {org}?", w.trade, [], pools["trade"]),
        ("In which town was the person whom {successor} succeeded as head of {org} born?", w.birthplace, [],
         pools["town"]),
    ]
    # a question never holds its answer (an organisation may be named after its craft)
    single = [s for s in single if str(s[1]).casefold() not in s[0].format(**_fields(w)).casefold()]
    chosen = rng.sample(single, SINGLE_PER_DOC) + rng.sample(joined, JOINED_PER_DOC)
    own = {w.founder, w.successor, w.town, w.new_town, w.birthplace, w.client_town, w.hall}
    out = []
    for (text, gold, same, pool), slot in zip(chosen, slots):
        # the pool's values of this document are never drawn: its only in-document distractor is `same`'s
        options, gold_index = _options(rng, gold, same, [p for p in pool if p not in own], slot)
        question = _cap(text.format(**_fields(w)))
        out.append({"question": question, "options": options, "gold_label": gold_index + 1,
                    "difficult": int(text in {t for t, *_ in joined})})
    return out


# ------------------------------------------------------------------------------------------------ the benchmark

def make_worlds(rng: random.Random, docs_per_split: int) -> dict[str, list[World]]:
    """Every split's documents' facts, their invented names drawn from one `Names`: unique across splits."""
    names = Names(rng)
    return {split: [make_world(rng, names) for _ in range(docs_per_split)] for split in SPLITS}


def generate(seed: int = SEED, docs_per_split: int = DOCS_PER_SPLIT) -> dict[str, list[dict]]:
    """{split: QuALITY-layout records}; the same records for the same arguments on every machine."""
    rng = random.Random(seed)
    worlds = make_worlds(rng, docs_per_split)
    out: dict[str, list[dict]] = {}
    for split, ws in worlds.items():
        # distractor pools from the split's own other documents: every option is an invented value of its type
        pools = {"person": sorted({p for w in ws for p in (w.founder, w.successor)}),
                 "town": sorted({t for w in ws for t in (w.town, w.new_town, w.birthplace, w.client_town)}),
                 "craft": sorted({c for c, _ in _CRAFTS}), "month": _MONTHS, "trade": _TRADES,
                 "hall": sorted({w.hall for w in ws})}
        n_q = docs_per_split * QUESTIONS_PER_DOC
        slots = [i % 4 for i in range(n_q)]  # the gold letter spread evenly over A-D
        rng.shuffle(slots)
        records = []
        for i, w in enumerate(ws):
            doc_id = f"knowledge-{split}-{i:03d}"
            article = "\n\n".join(paragraphs(rng, w))
            records.append({
                "article_id": doc_id, "set_unique_id": doc_id, "title": title_for(rng, w), "author": w.author,
                "year": 2026, "source": "ray_entigraph knowledge benchmark (invented)", "article": article,
                "questions": questions_for(rng, w, pools, slots[i * QUESTIONS_PER_DOC:(i + 1) * QUESTIONS_PER_DOC]),
            })
        out[split] = records
    return out


def serialise(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def write(directory: Path = HERE) -> dict[str, Path]:
    written = {}
    for split, records in generate().items():
        path = directory / f"knowledge_{split}.jsonl"
        path.write_text(serialise(records), encoding="utf-8")
        written[split] = path
    return written


if __name__ == "__main__":
    for split, path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE).items():
        print(f"{split}: {path}")
