"""Redaction benchmark: precision and recall per entity on a labelled set, and throughput.

A seeded generator writes short documents of filler prose with planted values of every
built-in entity (checksums valid where the entity has one: Luhn for cards, mod 97 for
IBANs, issuable SSN ranges, GB 11643 for CN resident IDs) in varied formats, plus
near-misses that must stay untouched: cards and IBANs with a wrong check digit, SSNs from
never-issued ranges, CN IDs with a bad date or check character, version strings, dates,
order numbers, template variables. ``clawdbot_sidecar.redaction.Redactor`` (default
config: every built-in entity) runs over the set.

A finding counts as a true positive when it overlaps a planted value of the same entity;
``exact`` is the share of those whose bounds match the planted value exactly. Every other
finding is a false positive, and ``near-miss hits`` counts the planted negatives (by the
entity they imitate) that were flagged as anything.

    .venv/bin/python bench/redaction.py [--docs 3000] [--seed 11]

Throughput is ``Redactor.detect`` and ``Redactor.redact_text`` over the whole set, and
``detect`` over the same filler prose with no entities at all (the common case), in MB of
UTF-8 text per second on one core.
"""

from __future__ import annotations

import argparse
import random
import string
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from clawdbot_sidecar.redaction import BUILTIN_ENTITIES, RedactionConfig, Redactor, Span

PROSE = (
    "the report shows revenue growth in the third quarter while costs stayed flat and the "
    "team plans to review the budget next week before the board meeting please summarise "
    "key risks and open questions for the customer account including delivery dates "
    "support tickets invoices and the renewal of the contract we shipped boxes to the "
    "warehouse yesterday and expect feedback from operations soon"
)
WORDS = PROSE.split()
TEMPLATES = (
    "Please contact {} about the renewal.",
    "The value on file is {} as of this morning.",
    "Can you check {} against the records?",
    "Reference: {}.",
    "They sent {} in the last message, is that right?",
    "Use {} for the next step",
)
CN_PROVINCES = ("11", "31", "44", "51", "33", "32", "65")
IBAN_FORMATS = {"DE": (8, 10, ""), "GB": (4, 14, "L"), "FR": (10, 13, ""), "NL": (4, 10, "L")}


# Text around a value, and the value: (before, value, after).
Planted = tuple[str, str, str]


def luhn_digit(body: str) -> str:
    """The check digit that makes ``body + digit`` pass Luhn."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def iban_check(country: str, bban: str) -> str:
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


def cn_check(body: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def alnum(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    # Keys always carry a digit (real ones do, and the sk- check relies on it).
    s = [rng.choice(alphabet) for _ in range(n)]
    s[rng.randrange(n)] = rng.choice(string.digits)
    return "".join(s)


# --- positives -------------------------------------------------------------------------


def email(rng: random.Random) -> str:
    user = rng.choice(["jane.doe", "j_smith", "li.wei+news", "ops-team", "m.rossi82"])
    domain = rng.choice(["example.com", "mail.example.org", "corp.example.co.uk", "ex.io"])
    return f"{user}{rng.randrange(100)}@{domain}"


def phone(rng: random.Random) -> str:
    area, exch, line = rng.randint(201, 989), rng.randint(200, 999), digits(rng, 4)
    return rng.choice(
        [
            f"+1 {area} {exch} {line}",
            f"({area}) {exch}-{line}",
            f"{area}-{exch}-{line}",
            f"+44 20 {digits(rng, 4)} {digits(rng, 4)}",
            f"+49 30 {digits(rng, 8)}",
            f"030 {digits(rng, 4)} {digits(rng, 4)}",
            f"0171-{digits(rng, 7)}",
            f"+33 1 {digits(rng, 2)} {digits(rng, 2)} {digits(rng, 2)} {digits(rng, 2)}",
        ]
    )


def card_digits(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)])
    body = prefix + digits(rng, length - len(prefix) - 1)
    return body + luhn_digit(body)


def card(rng: random.Random) -> str:
    d = card_digits(rng)
    if len(d) == 15:
        return rng.choice([d, f"{d[:4]} {d[4:10]} {d[10:]}"])
    sep = rng.choice(["", " ", "-"])
    return sep.join(d[i : i + 4] for i in range(0, 16, 4)) if sep else d


def iban_compact(rng: random.Random) -> str:
    country = rng.choice(list(IBAN_FORMATS))
    letters, tail, kind = IBAN_FORMATS[country]
    head = "".join(rng.choice(string.ascii_uppercase) for _ in range(letters))
    bban = (head if kind == "L" else digits(rng, letters)) + digits(rng, tail)
    return country + iban_check(country, bban) + bban


def iban(rng: random.Random) -> str:
    c = iban_compact(rng)
    return rng.choice([c, " ".join(c[i : i + 4] for i in range(0, len(c), 4))])


def ip(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    groups = [f"{rng.randrange(1, 65536):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return ":".join(groups)
    return f"2001:db8:{groups[2]}::{groups[6]}:{groups[7]}"


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    sep = rng.choice(["-", " "])
    return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"


def cn_id(rng: random.Random) -> str:
    born = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = rng.choice(CN_PROVINCES) + digits(rng, 4) + born + digits(rng, 3)
    return body + cn_check(body)


def api_key(rng: random.Random) -> str:
    upper = string.ascii_uppercase + string.digits
    return rng.choice(
        [
            f"sk-proj-{alnum(rng, 40)}",
            f"sk-ant-api03-{alnum(rng, 32)}",
            f"ghp_{alnum(rng, 36)}",
            f"AKIA{alnum(rng, 16, upper)}",
            f"xoxb-{digits(rng, 11)}-{alnum(rng, 24)}",
            f"AIza{alnum(rng, 35)}",
            f"hf_{alnum(rng, 34)}",
            f"eyJ{alnum(rng, 20)}.eyJ{alnum(rng, 30)}.{alnum(rng, 22)}",
        ]
    )


POSITIVES: dict[str, Callable[[random.Random], str]] = {
    "EMAIL": email,
    "PHONE": phone,
    "CREDIT_CARD": card,
    "IBAN": iban,
    "IP_ADDRESS": ip,
    "US_SSN": ssn,
    "CN_RESIDENT_ID": cn_id,
    "API_KEY": api_key,
}


# Harder, still common spellings: detectors may miss some of these by design (recall on
# them is reported apart from the main formats above).
def hard_email(rng: random.Random) -> Planted:
    return rng.choice(
        [
            ("", email(rng).upper(), ""),
            ("<", email(rng), ">"),
            ("mailto:", email(rng), ""),
            ("", "jose.perez@ejemplo.es".replace("o", "ó", 1), ""),
        ]
    )


def hard_phone(rng: random.Random) -> Planted:
    area, exch, line = rng.randint(201, 989), rng.randint(200, 999), digits(rng, 4)
    return rng.choice(
        [
            ("", f"{area}.{exch}.{line}", ""),
            ("", f"+1-{area}-{exch}-{line}", ""),
            ("", f"+1{area}{exch}{line}", ""),
            ("tel:", f"+1{area}{exch}{line}", ""),
            ("", f"{area}{exch}{line}", ""),
        ]
    )


def hard_card(rng: random.Random) -> Planted:
    body = "4" + digits(rng, 14)
    d = body + luhn_digit(body)
    return rng.choice(
        [("", ".".join(d[i : i + 4] for i in range(0, 16, 4)), ""), ("card:", d, ""), ("#", d, "")]
    )


def hard_iban(rng: random.Random) -> Planted:
    c = iban_compact(rng)
    return rng.choice(
        [("", c.lower(), ""), ("", "-".join(c[i : i + 4] for i in range(0, 28, 4)).strip("-"), "")]
    )


def hard_ip(rng: random.Random) -> Planted:
    v4 = ".".join(str(rng.randint(1, 254)) for _ in range(4))
    v6 = f"fe80::{rng.randrange(1, 65536):x}:{rng.randrange(1, 65536):x}"
    return rng.choice([("", v4, ":8080"), ("", v4, "/24"), ("", v6, ""), ("[", v6, "]:443")])


def hard_ssn(rng: random.Random) -> Planted:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return ("", f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}", "")


def hard_cn_id(rng: random.Random) -> Planted:
    value = cn_id(rng)
    return rng.choice(
        [("", value.lower(), ""), ("", f"{value[:6]} {value[6:14]} {value[14:]}", "")]
    )


def hard_key(rng: random.Random) -> Planted:
    hexes = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    aws_secret = alnum(rng, 40, string.ascii_letters + string.digits + "/+")
    return rng.choice(
        [
            ("api key ", hexes, ""),  # no prefix, no "=" or ":"
            ("AWS secret ", aws_secret, ""),
            ("", f"sk_test_{alnum(rng, 24)}", ""),  # Stripe test keys (live ones are found)
        ]
    )


HARD: dict[str, Callable[[random.Random], Planted]] = {
    "EMAIL": hard_email,
    "PHONE": hard_phone,
    "CREDIT_CARD": hard_card,
    "IBAN": hard_iban,
    "IP_ADDRESS": hard_ip,
    "US_SSN": hard_ssn,
    "CN_RESIDENT_ID": hard_cn_id,
    "API_KEY": hard_key,
}

# Secrets whose value is only a part of the planted text (the span to find is the value).
CONTEXT_SECRETS: tuple[tuple[str, str], ...] = (
    ("password={}", "pw"),
    ("Authorization: Bearer {}", "bearer"),
    ('"api_key": "{}"', "json"),
)


# --- near-misses -----------------------------------------------------------------------


def bad_card(rng: random.Random) -> str:
    d = card_digits(rng)
    return d[:-1] + str((int(d[-1]) + rng.randint(1, 9)) % 10)


def bad_iban(rng: random.Random) -> str:
    c = iban_compact(rng)
    wrong = f"{(int(c[2:4]) + rng.randint(1, 90)) % 97 + 2:02d}"
    return c[:2] + wrong + c[4:] if wrong != c[2:4] else c[:2] + "01" + c[4:]


def bad_ssn(rng: random.Random) -> str:
    area = rng.choice(["000", "666", f"{rng.randint(900, 999)}"])
    return rng.choice([f"{area}-{digits(rng, 2)}-1234", f"123-00-{rng.randint(1, 9999):04d}"])


def bad_cn_id(rng: random.Random) -> str:
    born = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = rng.choice(CN_PROVINCES) + digits(rng, 4) + born + digits(rng, 3)
    if rng.random() < 0.5:
        good = cn_check(body)
        return body + rng.choice([c for c in "0123456789X" if c != good])
    body = body[:10] + "13" + body[12:]  # month 13
    return body + cn_check(body)


def not_ip(rng: random.Random) -> str:
    return rng.choice(
        [
            f"version 10.0.{rng.randint(10000, 22000)}.{rng.randint(1, 999)}",
            f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
            f"{rng.randint(300, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.1",
            "std::vector",
        ]
    )


def not_phone(rng: random.Random) -> str:
    return rng.choice(
        [
            f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.20{rng.randint(10, 30)}",
            f"20{rng.randint(10, 30)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"ext. {rng.randint(100, 9999)}",
            f"${rng.randint(1, 999)},{rng.randint(100, 999)}.{rng.randint(10, 99)}",
        ]
    )


def not_card(rng: random.Random) -> str:
    return rng.choice([bad_card(rng), f"order 1{digits(rng, 12)}", f"tracking 9{digits(rng, 15)}"])


def not_email(rng: random.Random) -> str:
    return rng.choice(["jane at example dot com", "@channel", "user@localhost", "a@b"])


def not_key(rng: random.Random) -> str:
    return rng.choice(
        [
            "sk-learn-style pipelines",
            "password: {{PASSWORD}}",
            "token=<TOKEN>",
            "Secret: keep it",
            "api_key=$API_KEY",
            "the key question",
        ]
    )


NEGATIVES: dict[str, Callable[[random.Random], str]] = {
    "CREDIT_CARD": not_card,
    "IBAN": bad_iban,
    "US_SSN": bad_ssn,
    "CN_RESIDENT_ID": bad_cn_id,
    "IP_ADDRESS": not_ip,
    "PHONE": not_phone,
    "EMAIL": not_email,
    "API_KEY": not_key,
}


@dataclass
class Doc:
    text: str
    positives: list[Span] = field(default_factory=list)
    negatives: list[Span] = field(default_factory=list)
    hard: list[Span] = field(default_factory=list)


def filler(rng: random.Random, words: int) -> str:
    out = " ".join(rng.choice(WORDS) for _ in range(words))
    return out[0].upper() + out[1:] + "."


def make_doc(rng: random.Random, entities_per_doc: int, hard_share: float) -> Doc:
    parts: list[str] = []
    doc = Doc("")
    pos = 0

    def add(s: str) -> None:
        nonlocal pos
        parts.append(s)
        pos += len(s)

    add(filler(rng, rng.randint(10, 30)) + " ")
    for _ in range(entities_per_doc):
        entity = rng.choice(BUILTIN_ENTITIES)
        template = rng.choice(TEMPLATES)
        before, after = template.split("{}")
        if rng.random() < hard_share:
            lead, value, tail = HARD[entity](rng)
            add(before + lead)
            doc.hard.append(Span(pos, pos + len(value), entity))
            add(value + tail + after + " ")
        elif entity == "API_KEY" and rng.random() < 0.3:
            wrapper, _ = rng.choice(CONTEXT_SECRETS)
            value = alnum(rng, 24)
            w_before, w_after = wrapper.split("{}")
            add(before + w_before)
            doc.positives.append(Span(pos, pos + len(value), entity))
            add(value + w_after + after + " ")
        else:
            value = POSITIVES[entity](rng)
            add(before)
            doc.positives.append(Span(pos, pos + len(value), entity))
            add(value + after + " ")
        add(filler(rng, rng.randint(5, 20)) + " ")
    neg_entity = rng.choice(BUILTIN_ENTITIES)
    value = NEGATIVES[neg_entity](rng)
    template = rng.choice(TEMPLATES)
    before, after = template.split("{}")
    add(before)
    doc.negatives.append(Span(pos, pos + len(value), neg_entity))
    add(value + after + " ")
    add(filler(rng, rng.randint(5, 20)))
    doc.text = "".join(parts)
    return doc


def overlaps(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def evaluate(redactor: Redactor, docs: list[Doc], show: int) -> None:
    planted = Counter(s.entity for d in docs for s in d.positives)
    hard_total = Counter(s.entity for d in docs for s in d.hard)
    neg_total = Counter(s.entity for d in docs for s in d.negatives)
    tp: Counter[str] = Counter()
    exact: Counter[str] = Counter()
    hard_tp: Counter[str] = Counter()
    other: Counter[str] = Counter()  # planted values masked, but as another entity
    correct: Counter[str] = Counter()  # findings that match a planted value
    fp: Counter[str] = Counter()
    neg_hit: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}

    def note(kind: str, d: Doc, span: Span) -> None:
        seen = examples.setdefault(kind, [])
        if len(seen) < show:
            seen.append(repr(d.text[max(0, span.start - 12) : span.end + 12]))

    for d in docs:
        found = redactor.detect(d.text)
        for group, counter in ((d.positives, tp), (d.hard, hard_tp)):
            for p in group:
                match = [f for f in found if f.entity == p.entity and overlaps(f, p)]
                if match:
                    counter[p.entity] += 1
                    if group is d.positives:
                        exact[p.entity] += any(f.start == p.start and f.end == p.end for f in match)
                elif any(overlaps(f, p) for f in found):
                    other[p.entity] += 1
                else:
                    note(f"missed {p.entity}" + (" (hard)" if group is d.hard else ""), d, p)
        for f in found:
            if any(f.entity == p.entity and overlaps(f, p) for p in d.positives + d.hard):
                correct[f.entity] += 1
            else:
                fp[f.entity] += 1
                note(f"false {f.entity}", d, f)
        for n in d.negatives:
            if any(overlaps(f, n) for f in found):
                neg_hit[n.entity] += 1

    print(
        f"{'entity':15s} {'planted':>7s} {'recall':>7s} {'exact':>6s} | {'hard':>5s} {'recall':>7s}"
        f" | {'other':>5s} | {'findings':>8s} {'precision':>9s} {'FP':>4s} | {'near-miss':>9s}"
        f" {'hit':>4s}"
    )
    print("-" * 104)
    rows = [*BUILTIN_ENTITIES, "all"]
    for e in rows:

        def pick(c: Counter[str], e: str = e) -> int:
            return sum(c.values()) if e == "all" else c[e]

        n_planted, n_tp, n_hard, n_hard_tp = (
            pick(planted),
            pick(tp),
            pick(hard_total),
            pick(hard_tp),
        )
        n_found, n_fp = pick(correct) + pick(fp), pick(fp)
        print(
            f"{e:15s} {n_planted:7d} {ratio(n_tp, n_planted):>7s} {ratio(pick(exact), n_tp):>6s}"
            f" | {n_hard:5d} {ratio(n_hard_tp, n_hard):>7s} | {pick(other):5d}"
            f" | {n_found:8d} {ratio(pick(correct), n_found):>9s} {n_fp:4d}"
            f" | {pick(neg_total):9d} {pick(neg_hit):4d}"
        )
    for kind, texts in sorted(examples.items()):
        print(f"  {kind}: {', '.join(texts)}")


def ratio(a: int, b: int) -> str:
    return f"{a / b:.1%}" if b else "-"


def throughput(label: str, fn: Callable[[str], object], texts: list[str], repeat: int) -> None:
    size = sum(len(t.encode()) for t in texts)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for t in texts:
            fn(t)
        best = min(best, time.perf_counter() - t0)
    per_doc_us = best / len(texts) * 1e6
    print(
        f"{label:34s} {size / 1e6:6.2f} MB  {size / 1e6 / best:7.1f} MB/s"
        f"  {per_doc_us:7.1f} us/text"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--entities-per-doc", type=int, default=3)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--show", type=int, default=2, help="examples of each kind of error")
    p.add_argument("--hard-share", type=float, default=0.2, help="of planted values")
    p.add_argument("--repeat", type=int, default=3, help="throughput: best of this many")
    args = p.parse_args()
    rng = random.Random(args.seed)
    docs = [make_doc(rng, args.entities_per_doc, args.hard_share) for _ in range(args.docs)]
    redactor = Redactor(RedactionConfig())
    size = sum(len(d.text.encode()) for d in docs)
    print(
        f"{len(docs)} documents, {size / 1e6:.2f} MB, {sum(len(d.positives) for d in docs)}"
        f" planted values, {sum(len(d.negatives) for d in docs)} near-misses (seed {args.seed})\n"
    )
    evaluate(redactor, docs, args.show)
    print()
    texts = [d.text for d in docs]
    clean = [filler(rng, len(t) // 6) for t in texts]
    throughput("detect, labelled set", redactor.detect, texts, args.repeat)
    throughput("redact_text, labelled set", redactor.redact_text, texts, args.repeat)
    throughput("detect, prose without entities", redactor.detect, clean, args.repeat)
    big = " ".join(clean[:200])
    throughput("detect, one 200-doc text", redactor.detect, [big] * 5, args.repeat)


if __name__ == "__main__":
    main()
