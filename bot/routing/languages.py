"""The languages Parley translates between: names, aliases, and local detection.

Detection uses py3langid restricted to these languages (its model ships in the
package, ~0.1 ms a message): restricting it keeps short messages from being taken
for a language nobody here writes.
"""

from __future__ import annotations

from functools import cache

# ISO 639-1 code -> English name (what the LLM is told).
NAMES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "pl": "Polish",
    "sv": "Swedish",
    "da": "Danish",
    "cs": "Czech",
    "ru": "Russian",
    "uk": "Ukrainian",
    "tr": "Turkish",
    "ja": "Japanese",
    "zh": "Chinese",
    "ko": "Korean",
    "ar": "Arabic",
}

# How people name a language in a request, in English and in the language itself.
ALIASES = {
    **{name.lower(): code for code, name in NAMES.items()},
    "deutsch": "de",
    "allemand": "de",
    "alemán": "de",
    "aleman": "de",
    "tedesco": "de",
    "anglais": "en",
    "englisch": "en",
    "inglés": "en",
    "ingles": "en",
    "inglese": "en",
    "inglês": "en",
    "français": "fr",
    "francais": "fr",
    "französisch": "fr",
    "franzosisch": "fr",
    "francés": "fr",
    "frances": "fr",
    "español": "es",
    "espanol": "es",
    "spanisch": "es",
    "espagnol": "es",
    "castellano": "es",
    "italiano": "it",
    "italienisch": "it",
    "italien": "it",
    "português": "pt",
    "portugues": "pt",
    "portugiesisch": "pt",
    "portugais": "pt",
    "nederlands": "nl",
    "niederländisch": "nl",
    "niederlandisch": "nl",
    "néerlandais": "nl",
    "polski": "pl",
    "polnisch": "pl",
    "svenska": "sv",
    "schwedisch": "sv",
    "dansk": "da",
    "čeština": "cs",
    "russisch": "ru",
    "русский": "ru",
    "japanisch": "ja",
    "日本語": "ja",
    "chinesisch": "zh",
    "中文": "zh",
    "mandarin": "zh",
    "koreanisch": "ko",
    "türkçe": "tr",
    "türkisch": "tr",
}


def code_for(name: str) -> str | None:
    """`"German"`, `"deutsch"`, `"de"` -> `"de"`; None when the name is not known."""
    key = name.strip().lower()
    if key in NAMES:
        return key
    return ALIASES.get(key)


@cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(NAMES))
    return identifier


def detect(text: str) -> tuple[str, float]:
    """The most likely language of `text` among `NAMES`, with its probability."""
    code, probability = _identifier().classify(text)
    return str(code), float(probability)
