"""The README's chat-client sections say what the code does: every command of /help, every
rebindable key action, every colour class and every config key, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from chat_client import config
from chat_client.commands import ALIASES, COMMANDS
from chat_client.keys import ACTIONS
from chat_client.tui import STYLES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(title: str) -> str:
    """The text under a `### title` heading of the chat-client part, up to the next one."""
    start = README.index("\n## chat-client\n")
    head = README.index(f"\n### {title}\n", start)
    end = README.find("\n#", head + 1)
    return README[head:end]


def test_the_commands_table_is_the_help() -> None:
    rows = [re.split(r"(?<!\\)\|", line)[1] for line in section("Commands").splitlines()
            if line.startswith("| `/")]
    documented = {name for cell in rows for name in re.findall(r"`/(\w+)", cell)}
    documented |= set(re.findall(r"\(`/(\w+)`", section("Commands")))  # aliases in a row
    assert documented == set(COMMANDS) | set(ALIASES)


def test_every_key_action_and_colour_class_is_listed() -> None:
    cfg = section("Config file")
    keys = re.search(r"`\[keys\]` actions: (.*?)\. A key", cfg, re.S)
    colours = re.search(r"`\[colours\]` classes: (.*?)\.\n", cfg, re.S)
    assert keys is not None and colours is not None
    assert set(re.findall(r"`(\w+)` \(", keys[1])) == set(ACTIONS)
    assert set(re.findall(r"`([\w.]+)`", colours[1])) == set(STYLES)


def test_the_example_config_uses_every_key() -> None:
    example = section("Config file").split("```toml\n")[1].split("```")[0]
    keys = set(re.findall(r"^(\w+) =", example, re.M))
    tables = set(re.findall(r"^\[(\w+)", example, re.M))
    assert keys | tables >= set(config.TOP_KEYS) | set(config.SERVER_KEYS) | set(
        config.LOG_KEYS)
    assert keys <= set(config.TOP_KEYS) | set(config.SERVER_KEYS) | set(config.LOG_KEYS) | {
        *STYLES, *ACTIONS}
