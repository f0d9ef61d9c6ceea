"""`parley chat` as a user runs it: the real CLI in a subprocess, typing into its stdin."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.engine


def run_parley(args, *, stdin=b"", env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "bot.tools.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_console_chat_answers_streams_and_handles_bad_input(engine, redis_server, tmp_path):
    env = {
        "PARLEY_LLM_BASE_URL": engine,
        "PARLEY_LLM_MAX_TOKENS": "10",
        "PARLEY_LLM_EXTRA_BODY": '{"ignore_eos": true}',
        "PARLEY_REDIS_URL": redis_server.url,
        "PARLEY_REDIS_PREFIX": "console-test",
    }
    typed = b"hello there\n\n\xff\xfe not utf-8\n/reset\n/help\nsecond question\n/quit\n"
    result = run_parley(["--env-file", str(tmp_path / "none.env"), "chat"], stdin=typed, env=env)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    answers = [line for line in out.split("parley> ")[1:]]
    assert len(answers) == 6  # one answer per typed line before /quit
    assert answers[1].startswith("Your message was empty")
    assert answers[2].startswith("Your message contains bytes that aren't valid text")
    assert answers[3].startswith("Done: I've forgotten this conversation")
    assert answers[4].startswith("I'm Parley")
    assert all(a.strip() for a in (answers[0], answers[5]))  # the model's (random) words


def test_bad_settings_fail_with_one_clear_line(tmp_path):
    env_file = tmp_path / "bad.env"
    env_file.write_text("PARLEY_LLM_MAX_CONCURRENCY=lots\n")
    result = run_parley(["--env-file", str(env_file), "chat"], timeout=60)
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "parley: invalid setting PARLEY_LLM_MAX_CONCURRENCY: "
        "Input should be a valid integer, unable to parse string as an integer"
    )


def test_serve_without_a_platform_says_what_to_set(tmp_path):
    result = run_parley(
        ["--env-file", str(tmp_path / "none.env"), "serve"],
        env={"SLACK_BOT_TOKEN": "", "DISCORD_TOKEN": "", "PARLEY_WEB_ENABLED": ""},
        timeout=60,
    )
    assert result.returncode == 2
    assert "set SLACK_BOT_TOKEN, DISCORD_TOKEN or PARLEY_WEB_ENABLED" in result.stderr.decode()


def test_unreachable_redis_is_a_clear_start_up_error(tmp_path):
    env = {"PARLEY_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0", "PARLEY_LLM_BASE_URL": "http://127.0.0.1:1/v1"}
    result = run_parley(["--env-file", str(tmp_path / "none.env"), "chat"], env=env, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 2
    assert "invalid setting PARLEY_REDIS_URL: cannot reach Redis at redis://127.0.0.1:1/0" in err
    assert "hunter2" not in err
