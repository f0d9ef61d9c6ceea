"""Routing patterns, tenants validation, moderation checks, masking, detection, chunking: no servers."""

from pathlib import Path

import pytest

from bot.errors import TenantConfigError
from bot.handlers.translate import Unmasker, mask
from bot.knowledge.base import Document, chunk_document, load_documents
from bot.moderation.pii import find_pii, iban_ok, luhn_ok, redact_pii
from bot.routing.classifier import HANDOFF_CUE, cues
from bot.routing.languages import detect
from bot.routing.router import explicit
from bot.tenants import load_tenants


@pytest.mark.parametrize(
    "command, text, intent, target, payload",
    [
        ("ask", "how do I reset my password", "qa", None, "how do I reset my password"),
        ("translate", "German: good morning", "translate", "de", "good morning"),
        ("handoff", "I'd like to talk to a person, please.", "handoff", None, "I'd like to talk to a person, please."),
        ("handoff", "translate: hola", "handoff", None, "translate: hola"),  # the button, whatever the words
        (None, "translate to German: see you tomorrow", "translate", "de", "see you tomorrow"),
        (None, "Übersetze bitte ins Englische: Vielen Dank", "translate", "en", "Vielen Dank"),
        (None, "traduis en espagnol : merci", "translate", "es", "merci"),
        (None, 'How do you say "invoice" in French?', "translate", "fr", "invoice"),
        (None, "translate: hola amigo", "translate", None, "hola amigo"),
    ],
)
def test_explicit_routes(command, text, intent, target, payload):
    route = explicit(command, text)
    assert (route.intent, route.step, route.target, route.text) == (intent, "explicit", target, payload)


def test_plain_questions_are_not_explicit():
    assert explicit(None, "How do I translate my workspace UI into German?") is None
    assert explicit(None, "hello") is None


@pytest.mark.parametrize(
    "text, cue",
    [
        ("Can someone from your team call me back?", True),
        ("please call me", True),
        ("How do I set up an on-call rotation that follows the sun?", False),  # names nobody to talk to
        ("Who is on-call for payments tonight?", False),
        ("我要人工客服", True),
        ("折り返し電話をお願いします", True),
        ("¿me pueden llamar?", True),
    ],
)
def test_handoff_cue_names_a_person_or_a_call(text, cue):
    # The cue is one of the routing model's features (with a learned weight, not a gate).
    assert bool(HANDOFF_CUE.search(text)) is cue
    assert cues(text)[0] == float(cue)


def test_tenants_file_errors_name_file_tenant_and_field(tmp_path):
    path = tmp_path / "tenants.toml"
    path.write_text('[default]\nlanguage = "en"\n[tenants."T9"]\nhandlers = ["chat", "weather"]\n')
    with pytest.raises(TenantConfigError) as err:
        load_tenants(path)
    assert (err.value.path, err.value.tenant, err.value.field) == (str(path), "T9", "handlers")
    assert "\n" not in str(err.value)
    path.write_text('[default.moderation]\npersonal_data = "shred"\n')
    with pytest.raises(TenantConfigError, match=r"moderation\.personal_data"):
        load_tenants(path)


def test_listed_tenant_inherits_the_default(tmp_path):
    path = tmp_path / "tenants.toml"
    path.write_text(
        '[default]\nlanguage = "fr"\n[default.moderation]\nprofanity = "flag"\n'
        '[tenants."T1"]\nknowledge_base = "acme"\n[tenants."T1".moderation]\npersonal_data = "refuse"\n'
    )
    tenants = load_tenants(path)
    t1 = tenants.get("T1")
    assert (t1.language, t1.knowledge_base, t1.moderation.profanity, t1.moderation.personal_data) == (
        "fr",
        "acme",
        "flag",
        "refuse",
    )
    assert tenants.get("other") is tenants.default
    assert load_tenants(None).default.handlers == ("chat", "qa", "translate")  # the shipped file is valid


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")


def test_personal_data_is_found_and_redacted_but_look_alikes_are_not():
    text = (
        "mail jane.doe@example.com, call +49 30 1234567 or 0151 2345678, card 4111-1111-1111-1111, "
        "IBAN GB82 WEST 1234 5698 7654 32; order 4111111111111112, ref DE00 1234 5678 9012 3456 78"
    )
    kinds = [k for k, _, _ in find_pii(text)]
    assert kinds == ["email", "phone", "phone", "card", "iban"]
    redacted = redact_pii(text)
    for secret in ("jane.doe", "1234567", "2345678", "4111-1111", "WEST"):
        assert secret not in redacted
    assert "4111111111111112" in redacted and "DE00 1234" in redacted


def test_mask_and_unmask_across_split_deltas():
    text = "see <@U123> and <@456> at https://x.example/a?b=1 :smile: `cfg` ```\nrun()\n```"
    masked = mask(text)
    assert len(masked.spans) == 6 and "<@U123>" not in masked.text and "https://" not in masked.text
    unmasker = Unmasker(masked.spans)
    out = "".join(unmasker.feed(d) for d in ["siehe ⟦", "0⟧ und ⟦1", "⟧ ⟦2⟧ ⟦3⟧"]) + unmasker.flush()
    assert out == "siehe <@U123> und <@456> https://x.example/a?b=1 :smile:"
    assert unmasker.missing == ["`cfg`", "```\nrun()\n```"]


@pytest.mark.parametrize(
    "text, code",
    [
        ("Wie kann ich mein Passwort zurücksetzen?", "de"),
        ("Je n'arrive pas à me connecter à mon compte", "fr"),
        ("¿Dónde puedo descargar mis facturas?", "es"),
        ("The sync has been stuck for an hour", "en"),
        ("Non riesco ad accedere al mio account", "it"),
        ("Ik kan mijn wachtwoord niet wijzigen", "nl"),
    ],
)
def test_language_detection_on_mixed_samples(text, code):
    assert detect(mask(text + " <@U1> https://x.example :tada:").prose)[0] == code


def test_chunks_follow_headings_and_overlap():
    body = (
        "# Guide\n\n## One\n\n"
        + "\n\n".join(f"Paragraph {i} " + "word " * 30 for i in range(6))
        + "\n\n## Two\n\nShort."
    )
    chunks = chunk_document(Document("g.md", "Guide", body), size=400, overlap=80)
    assert {c.heading for c in chunks} == {"One", "Two"}
    ones = [c for c in chunks if c.heading == "One"]
    assert len(ones) >= 3 and all(len(c.text) <= 400 + 90 for c in ones)
    assert all(c.text.startswith("…") for c in ones[1:])  # each continues the previous one


def test_sample_kb_reads_markdown_front_matter_and_html():
    docs = {d.source: d for d in load_documents(Path(__file__).parents[2] / "deploy" / "sample-kb")}
    assert docs["billing.md"].url == "https://help.quillstack.example/billing"
    api = docs["api.html"]
    assert api.title == "Quillstack API and webhooks" and api.url == "https://developers.quillstack.example/api"
    assert "## Rate limits" in api.text and "Home | Docs" not in api.text
