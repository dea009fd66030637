"""Modal questions: start the embedded server, confirm a deletion."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class Ask(ModalScreen[bool]):
    """A yes/no question; Enter or y says yes, Escape or n says no."""

    BINDINGS = [Binding("y", "answer(True)", "Yes", show=False), Binding("n,escape", "answer(False)", "No")]
    DEFAULT_CSS = """
    Ask { align: center middle; }
    Ask > Vertical { width: 64; height: auto; padding: 1 2; border: thick $accent; background: $surface; }
    Ask .buttons { height: auto; margin-top: 1; align-horizontal: right; }
    Ask Button { margin-left: 1; }
    """

    def __init__(self, question: str, yes: str, no: str):
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Content(self.question))
            with Horizontal(classes="buttons"):
                yield Button(self.no, id="no")
                yield Button(self.yes, id="yes", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def start_server_question(state_dir: str) -> Ask:
    return Ask(f"No model server is running for {state_dir}.\n\nStart the embedded vLLM server now? "
               "It takes 30-90 s on a CPU; it keeps running after you leave (strop serve stop ends it).",
               yes="Start", no="Quit")


def delete_question(name: str) -> Ask:
    return Ask(f"Delete the thread “{name}” and its saved conversation?", yes="Delete", no="Keep")
