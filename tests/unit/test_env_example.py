"""`.env.example` lists every setting Parley reads, and nothing it does not."""

import re
from pathlib import Path

from bot.config import Settings


def setting_variables():
    names = set()
    for section in Settings.SECTIONS:
        cls = Settings.model_fields[section].default_factory
        prefix = cls.model_config["env_prefix"]
        # A field with an alias is read under that name (HF_TOKEN, as huggingface_hub reads it).
        names |= {
            (info.validation_alias if isinstance(info.validation_alias, str) else prefix + field).upper()
            for field, info in cls.model_fields.items()
        }
    return names


def test_env_example_lists_every_setting():
    text = (Path(__file__).parents[2] / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    assert listed == setting_variables()
