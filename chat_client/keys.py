"""The full-screen client's key bindings: fixed ones (editing, history, Ctrl+C/Ctrl+D,
Alt+1..9) and the actions the config file may bind to other keys (ACTIONS)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

if TYPE_CHECKING:
    from .tui import ChatUI

# Key bindings that the config file may change: action -> (default keys, what it does).
# A key is prompt_toolkit's name ("c-r", "pageup", "f5"); "escape a" is Alt+A.
ACTIONS: dict[str, tuple[list[str], str]] = {
    "next_active": (["escape a"], "go to the buffer with the most important activity"),
    "search": (["c-r"], "search the current buffer as you type"),
    "next_buffer": (["c-n"], "next buffer"),
    "prev_buffer": (["c-p"], "previous buffer"),
    "page_up": (["pageup"], "scroll a page up"),
    "page_down": (["pagedown"], "scroll a page down"),
    "top": (["c-home"], "top of the buffer"),
    "bottom": (["c-end"], "bottom of the buffer"),
}


def key_bindings(ui: ChatUI, keys: dict[str, list[str]]) -> KeyBindings:
    """Every binding of `ui`; `keys` replaces the default keys of the actions it names."""
    kb = KeyBindings()
    m, pane, search = ui.model, ui.messages, ui.search
    searching = Condition(lambda: search.mode is not None)

    @kb.add("c-c")
    def _(event: KeyPressEvent) -> None:
        ui.interrupt()

    @kb.add("c-d")
    def _(event: KeyPressEvent) -> None:
        buf = event.current_buffer
        if buf.text:
            buf.delete()
        else:
            ui.quit()

    @kb.add("escape", "enter")
    def _(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add("up")
    def _(event: KeyPressEvent) -> None:
        buf = event.current_buffer
        if buf.document.cursor_position_row > 0:
            buf.cursor_up()
        elif (text := ui.history.up(buf.text)) is not None:
            buf.document = Document(text, len(text))

    @kb.add("down")
    def _(event: KeyPressEvent) -> None:
        buf = event.current_buffer
        if buf.document.cursor_position_row < buf.document.line_count - 1:
            buf.cursor_down()
        elif (text := ui.history.down()) is not None:
            buf.document = Document(text, len(text))

    @kb.add("tab")
    def _(event: KeyPressEvent) -> None:
        if search.mode is None:
            ui.completion.complete(event.current_buffer)

    @kb.add("c-g", filter=searching)
    @kb.add("escape", filter=searching)
    def _(event: KeyPressEvent) -> None:
        search.end(keep=False)

    # Home/End move in the input line while it has text; on an empty line (where they
    # would do nothing) they go to the top/bottom of the buffer, as Ctrl+Home/Ctrl+End
    # always do.
    empty = Condition(lambda: not ui.input.text)

    @kb.add("home", filter=empty)
    def _(event: KeyPressEvent) -> None:
        pane.scroll_top()

    @kb.add("end", filter=empty)
    def _(event: KeyPressEvent) -> None:
        pane.scroll_bottom()

    actions: dict[str, Callable[[], object]] = {
        "next_active": m.jump_active,
        "search": search.start_or_older,
        "next_buffer": lambda: m.cycle(1),
        "prev_buffer": lambda: m.cycle(-1),
        "page_up": lambda: pane.scroll(-1),
        "page_down": lambda: pane.scroll(1),
        "top": pane.scroll_top,
        "bottom": pane.scroll_bottom,
    }
    for action, run in actions.items():
        for key in keys.get(action, ACTIONS[action][0]):
            kb.add(*key.split())(_runs(run))

    for n in range(1, 10):  # Alt+N: the Nth buffer
        kb.add("escape", str(n))(_runs(partial(m.switch_index, n - 1)))

    return kb


def _runs(action: Callable[[], object]) -> Callable[[KeyPressEvent], None]:
    """A key handler that runs `action` (and returns None: the key was handled)."""
    def handler(event: KeyPressEvent) -> None:
        action()
    return handler
