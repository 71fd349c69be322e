//! The operator console on the host UART: the `mipsvisor> ` prompt, a line editor, and the
//! commands of `hv_services::console` run against the services' [`OperatorView`].
//!
//! Polled, never waiting: the services task calls [`poll`] once per round, which takes what
//! the UART received (at most [`MAX_BYTES_PER_POLL`] bytes, so a flood of input cannot stall
//! a round), edits the line and runs each finished one. Every line of a command's answer is
//! printed with the prefix `console: `, so nothing the operator asks for can be mistaken for
//! a scenario's own `STAT` or `RESULT` lines. The prompt is shown only while the operator
//! types: the first key of a line draws it with the echo, and it stays on an open line that
//! other output closes first (see `console`); the next key draws prompt and line again. So
//! a run nobody types into shows no prompt at all, and no prompt is left standing alone
//! between other lines after an answer.

use crate::console;
use alloc::string::String;
use hv_services::console::{execute, Edit, LineEditor, OperatorView};
use spin::Mutex;

/// Prefix of every answer line.
pub const ANSWER_PREFIX: &str = "console: ";
/// Received bytes handled per poll at most.
pub const MAX_BYTES_PER_POLL: usize = 256;

/// The console's state between polls.
struct Operator {
    editor: LineEditor,
}

static OPERATOR: Mutex<Operator> = Mutex::new(Operator {
    editor: LineEditor::new(),
});

/// The echo of one received byte (a few bytes; Ctrl-U erases at most a line's worth).
struct Echo(String);

impl core::fmt::Write for Echo {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        self.0.push_str(text);
        Ok(())
    }
}

/// Handles what the operator typed since the last call: echo, editing, and the commands of
/// finished lines, answered from `view`. Returns at once if another CPU is polling.
pub fn poll(view: &mut dyn OperatorView) {
    let Some(mut operator) = OPERATOR.try_lock() else {
        return;
    };
    let mut echo = Echo(String::new());
    for _ in 0..MAX_BYTES_PER_POLL {
        let Some(byte) = console::try_read_byte() else {
            break;
        };
        echo.0.clear();
        let edit = operator.editor.feed(byte, &mut echo);
        // On a new line (the first key, or other output ended the prompt line) this shows
        // prompt and line instead of the bare echo.
        let editor = &operator.editor;
        console::echo(&echo.0, &|out| editor.redraw(out));
        match edit {
            Ok(Edit::Line) => {
                run(operator.editor.line(), view);
                operator.editor.clear();
            }
            Ok(Edit::Cancelled | Edit::Pending) | Err(_) => {}
        }
    }
}

/// Runs one line and prints its answer.
fn run(line: &[u8], view: &mut dyn OperatorView) {
    let mut answer = String::new();
    if execute(line, view, &mut answer).is_err() {
        answer.push_str("error: the answer could not be formatted\n");
    }
    console::print_prefixed(ANSWER_PREFIX, &answer);
}
