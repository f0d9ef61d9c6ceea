import pytest

from bot.config import load_settings
from bot.errors import ConfigError


def test_defaults_load_without_any_configuration(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    assert settings.redis.url is None
    assert settings.llm.base_url is None
    assert not settings.slack.enabled and not settings.discord.enabled


def test_nested_sections_read_their_prefixed_variables(monkeypatch):
    monkeypatch.setenv("PARLEY_LLM_BASE_URL", "http://gpu-box:8000/v1/")
    monkeypatch.setenv("PARLEY_LLM_EXTRA_BODY", '{"ignore_eos": true}')
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "4")
    monkeypatch.setenv("DISCORD_SHARD_IDS", "[0, 2]")
    settings = load_settings(None)
    assert settings.llm.base_url == "http://gpu-box:8000/v1"
    assert settings.llm.extra_body == {"ignore_eos": True}
    assert settings.redis.url == "redis://cache:6379/2"
    assert settings.slack.enabled
    assert settings.slack.bot_token.get_secret_value() == "xoxb-secret"
    assert "xoxb-secret" not in repr(settings)
    assert settings.discord.shard_ids == [0, 2]


def test_env_file_is_read(monkeypatch, tmp_path):
    env = tmp_path / ".env"
    env.write_text("PARLEY_CONTEXT_TOKEN_BUDGET=1234\n")
    assert load_settings(env).context.token_budget == 1234


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PARLEY_LLM_MAX_CONCURRENCY", "lots"),
        ("PARLEY_LLM_BASE_URL", "gpu-box:8000"),
        ("PARLEY_REDIS_URL", "http://cache"),
        ("PARLEY_CONTEXT_COMPACT_TO", "1.5"),
        ("PARLEY_LOG_LEVEL", "chatty"),
        ("PARLEY_LLM_TOKENIZER", "/nowhere/tokenizer.json"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert info.value.setting == var


def test_a_bad_secret_is_never_echoed(monkeypatch):
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "s3cr3t-token-value")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert "s3cr3t" not in str(info.value)
