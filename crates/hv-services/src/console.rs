//! Operator console: the command language of the host-UART prompt, its line editor, and the
//! view of the running system that the firmware provides.
//!
//! The firmware feeds each received byte to a [`LineEditor`]; a finished line goes to
//! [`execute`], which parses it and asks the [`OperatorView`] for the answer. The UART is
//! untrusted input (anything can be piped into QEMU's stdin), so every malformed line gets a
//! one-line `error: ...` message and nothing here panics, whatever the bytes.
//!
//! Commands (case-insensitive keywords, arguments separated by spaces or tabs):
//! `help`, `vms`, `stats`, `ksm`, `balloon <vm> <MiB>`, `swap`, `idle <vm>`.

use core::fmt::{self, Write};

/// The prompt the firmware prints before each line of input.
pub const PROMPT: &str = "mipsvisor> ";
/// Longest accepted command line, in bytes (without the line terminator).
pub const MAX_LINE_BYTES: usize = 128;
/// Longest accepted VM name, in bytes.
pub const MAX_VM_NAME_BYTES: usize = 32;
/// Largest balloon target the parser accepts, in MiB (1 TiB): large enough for any Malta
/// guest, small enough that converting to bytes cannot overflow a `u64`.
pub const MAX_BALLOON_MIB: u64 = 1 << 20;

/// What the console can ask of the running system; the firmware's services task implements
/// it. Each method writes its answer as whole lines (ending in `\n`) to `out`.
pub trait OperatorView {
    /// The VMs with their memory figures.
    fn vms(&self, out: &mut dyn fmt::Write) -> fmt::Result;
    /// The counters of every memory service.
    fn stats(&self, out: &mut dyn fmt::Write) -> fmt::Result;
    /// The dedup counters (KSM's names).
    fn ksm(&self, out: &mut dyn fmt::Write) -> fmt::Result;
    /// Sets the balloon target of the VM named `vm` to `mib` MiB and reports the outcome
    /// (including an unknown VM or a target the VM cannot take).
    fn balloon(&mut self, vm: &str, mib: u64, out: &mut dyn fmt::Write) -> fmt::Result;
    /// The swap pool and eviction counters.
    fn swap(&self, out: &mut dyn fmt::Write) -> fmt::Result;
    /// The working-set estimate and idle ages of the VM named `vm` (or why there are none).
    fn idle(&self, vm: &str, out: &mut dyn fmt::Write) -> fmt::Result;
}

/// Longest stop reason the `vms` state column shows (the log has the whole line).
pub const STATE_REASON_BYTES: usize = 72;

/// A VM's state in the `vms` table's last column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState<'a> {
    /// Running and making progress.
    Running,
    /// Running but without progress for `quiet_ms` (see [`crate::watchdog`]).
    Stuck {
        /// Milliseconds since its last progress.
        quiet_ms: u64,
    },
    /// The guest exited with this status.
    Exited(u64),
    /// The hypervisor stopped it, for this reason.
    Stopped(&'a str),
}

impl fmt::Display for VmState<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VmState::Running => f.write_str("running"),
            VmState::Stuck { quiet_ms } => write!(f, "stuck (no progress for {quiet_ms} ms)"),
            VmState::Exited(0) => f.write_str("exited 0"),
            VmState::Exited(status) => write!(f, "exited with an error ({status})"),
            VmState::Stopped(why) => {
                let mut end = why.len().min(STATE_REASON_BYTES);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                let cut = if end < why.len() { "..." } else { "" };
                write!(f, "stopped: {}{cut}", &why[..end])
            }
        }
    }
}

/// One parsed console command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `help`: list the commands.
    Help,
    /// `vms`: list the VMs.
    Vms,
    /// `stats`: every service's counters.
    Stats,
    /// `ksm`: the dedup counters.
    Ksm,
    /// `balloon <vm> <MiB>`: set a VM's balloon target.
    Balloon {
        /// VM name.
        vm: &'a str,
        /// Target in MiB.
        mib: u64,
    },
    /// `swap`: the swap counters.
    Swap,
    /// `idle <vm>`: a VM's working set.
    Idle {
        /// VM name.
        vm: &'a str,
    },
}

/// Why a console line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleError<'a> {
    /// The line is longer than [`MAX_LINE_BYTES`].
    LineTooLong,
    /// A byte other than printable ASCII, space or tab (column counts from 1).
    NonPrintable {
        /// 1-based position of the first such byte.
        column: usize,
        /// The byte.
        byte: u8,
    },
    /// The first word is no command.
    UnknownCommand(&'a str),
    /// A required argument is missing.
    MissingArgument {
        /// The command's keyword.
        command: &'static str,
        /// The missing argument, as shown in the usage.
        argument: &'static str,
    },
    /// More arguments than the command takes.
    ExtraArgument {
        /// The command's keyword.
        command: &'static str,
        /// The first surplus word.
        text: &'a str,
    },
    /// A number argument is not a decimal number that fits in 64 bits.
    BadNumber {
        /// The command's keyword.
        command: &'static str,
        /// The word given.
        text: &'a str,
    },
    /// A balloon target above [`MAX_BALLOON_MIB`].
    BalloonTooLarge {
        /// The requested target in MiB.
        mib: u64,
    },
    /// A VM name longer than [`MAX_VM_NAME_BYTES`].
    VmNameTooLong {
        /// The command's keyword.
        command: &'static str,
    },
}

/// Shows user text in quotes, cut short so that an error message stays one short line.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_BYTES: usize = 24;
        // The parser only quotes ASCII, so any byte index is a char boundary; `get` keeps
        // this total anyway.
        match self.0.get(..SHOWN_BYTES) {
            Some(head) if head.len() < self.0.len() => write!(f, "'{head}...'"),
            _ => write!(f, "'{}'", self.0),
        }
    }
}

impl fmt::Display for ConsoleError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConsoleError::LineTooLong => {
                write!(f, "line longer than {MAX_LINE_BYTES} bytes, ignored")
            }
            ConsoleError::NonPrintable { column, byte } => {
                write!(
                    f,
                    "non-printable byte {byte:#04x} at column {column}, line ignored"
                )
            }
            ConsoleError::UnknownCommand(word) => {
                write!(
                    f,
                    "unknown command {}; type 'help' for the list",
                    Quoted(word)
                )
            }
            ConsoleError::MissingArgument { command, argument } => {
                write!(
                    f,
                    "{command}: missing {argument}; usage: {}",
                    usage(command)
                )
            }
            ConsoleError::ExtraArgument { command, text } => write!(
                f,
                "{command}: unexpected argument {}; usage: {}",
                Quoted(text),
                usage(command)
            ),
            ConsoleError::BadNumber { command, text } => write!(
                f,
                "{command}: {} is not a decimal number; usage: {}",
                Quoted(text),
                usage(command)
            ),
            ConsoleError::BalloonTooLarge { mib } => {
                write!(
                    f,
                    "balloon: {mib} MiB exceeds the limit of {MAX_BALLOON_MIB} MiB"
                )
            }
            ConsoleError::VmNameTooLong { command } => {
                write!(
                    f,
                    "{command}: VM name longer than {MAX_VM_NAME_BYTES} bytes"
                )
            }
        }
    }
}

/// One row of the command table: keyword, usage, what it does.
struct CommandInfo {
    keyword: &'static str,
    usage: &'static str,
    summary: &'static str,
}

/// Every command, in the order `help` lists them.
const COMMANDS: [CommandInfo; 7] = [
    CommandInfo {
        keyword: "help",
        usage: "help",
        summary: "list these commands",
    },
    CommandInfo {
        keyword: "vms",
        usage: "vms",
        summary: "the VMs and their memory",
    },
    CommandInfo {
        keyword: "stats",
        usage: "stats",
        summary: "counters of every memory service",
    },
    CommandInfo {
        keyword: "ksm",
        usage: "ksm",
        summary: "page dedup counters",
    },
    CommandInfo {
        keyword: "balloon",
        usage: "balloon <vm> <MiB>",
        summary: "set a VM's balloon target (0 deflates)",
    },
    CommandInfo {
        keyword: "swap",
        usage: "swap",
        summary: "compressed swap counters",
    },
    CommandInfo {
        keyword: "idle",
        usage: "idle <vm>",
        summary: "a VM's working set and idle pages",
    },
];

/// The usage text of `keyword` (which is one of [`COMMANDS`]).
fn usage(keyword: &str) -> &'static str {
    COMMANDS
        .iter()
        .find(|info| info.keyword == keyword)
        .map_or("help", |info| info.usage)
}

/// True for the bytes a command line may hold: printable ASCII, space and tab.
fn is_line_byte(byte: u8) -> bool {
    byte == b'\t' || (b' '..=b'~').contains(&byte)
}

/// Parses one line (without or with its `\r`/`\n` terminator). `Ok(None)` for a blank line.
pub fn parse(line: &[u8]) -> Result<Option<Command<'_>>, ConsoleError<'_>> {
    let mut line = line;
    while let [rest @ .., b'\r' | b'\n'] = line {
        line = rest;
    }
    if line.len() > MAX_LINE_BYTES {
        return Err(ConsoleError::LineTooLong);
    }
    if let Some(index) = line.iter().position(|&byte| !is_line_byte(byte)) {
        return Err(ConsoleError::NonPrintable {
            column: index + 1,
            byte: line[index],
        });
    }
    // Only ASCII is left, so this cannot fail; report it like a bad byte if it ever did.
    let text = core::str::from_utf8(line).map_err(|e| ConsoleError::NonPrintable {
        column: e.valid_up_to() + 1,
        byte: line.get(e.valid_up_to()).copied().unwrap_or(0),
    })?;
    let mut words = text.split([' ', '\t']).filter(|word| !word.is_empty());
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let Some(info) = COMMANDS
        .iter()
        .find(|info| info.keyword.eq_ignore_ascii_case(first))
    else {
        return Err(ConsoleError::UnknownCommand(first));
    };
    let command = info.keyword;
    let mut argument = |name: &'static str| {
        words.next().ok_or(ConsoleError::MissingArgument {
            command,
            argument: name,
        })
    };
    let parsed = match command {
        "help" => Command::Help,
        "vms" => Command::Vms,
        "stats" => Command::Stats,
        "ksm" => Command::Ksm,
        "swap" => Command::Swap,
        "balloon" => {
            let vm = vm_name(command, argument("<vm>")?)?;
            let mib = mebibytes(command, argument("<MiB>")?)?;
            Command::Balloon { vm, mib }
        }
        // "idle" is the only keyword left.
        _ => Command::Idle {
            vm: vm_name(command, argument("<vm>")?)?,
        },
    };
    match words.next() {
        Some(text) => Err(ConsoleError::ExtraArgument { command, text }),
        None => Ok(Some(parsed)),
    }
}

/// Checks a VM-name argument.
fn vm_name<'a>(command: &'static str, word: &'a str) -> Result<&'a str, ConsoleError<'a>> {
    if word.len() > MAX_VM_NAME_BYTES {
        return Err(ConsoleError::VmNameTooLong { command });
    }
    Ok(word)
}

/// Parses a MiB argument: decimal digits only, at most [`MAX_BALLOON_MIB`].
fn mebibytes<'a>(command: &'static str, word: &'a str) -> Result<u64, ConsoleError<'a>> {
    let bad = ConsoleError::BadNumber {
        command,
        text: word,
    };
    if !word.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad);
    }
    let mib: u64 = word.parse().map_err(|_| bad)?;
    if mib > MAX_BALLOON_MIB {
        return Err(ConsoleError::BalloonTooLarge { mib });
    }
    Ok(mib)
}

/// Writes the command list, one command per line.
pub fn write_help(out: &mut dyn Write) -> fmt::Result {
    writeln!(out, "commands:")?;
    for info in &COMMANDS {
        writeln!(out, "  {:<20} {}", info.usage, info.summary)?;
    }
    Ok(())
}

/// Parses `line` and runs it against `view`, writing the answer (or a one-line `error: ...`)
/// to `out`. A blank line writes nothing. Only `out` failing makes this return an error.
pub fn execute(line: &[u8], view: &mut dyn OperatorView, out: &mut dyn Write) -> fmt::Result {
    match parse(line) {
        Ok(None) => Ok(()),
        Ok(Some(Command::Help)) => write_help(out),
        Ok(Some(Command::Vms)) => view.vms(out),
        Ok(Some(Command::Stats)) => view.stats(out),
        Ok(Some(Command::Ksm)) => view.ksm(out),
        Ok(Some(Command::Balloon { vm, mib })) => view.balloon(vm, mib, out),
        Ok(Some(Command::Swap)) => view.swap(out),
        Ok(Some(Command::Idle { vm })) => view.idle(vm, out),
        Err(error) => writeln!(out, "error: {error}"),
    }
}

/// ASCII backspace.
const BACKSPACE: u8 = 0x08;
/// ASCII DEL, what most terminals send for the backspace key.
const DELETE: u8 = 0x7f;
/// Ctrl-C: drop the line being typed.
const CTRL_C: u8 = 0x03;
/// Ctrl-U: erase the line being typed.
const CTRL_U: u8 = 0x15;

/// What one byte did to the line being edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// The line is not finished yet.
    Pending,
    /// A line terminator arrived: [`LineEditor::line`] holds the line; call
    /// [`LineEditor::clear`] after running it.
    Line,
    /// Ctrl-C: the line was dropped (the echo ended the terminal line).
    Cancelled,
}

/// A line editor for a dumb terminal: echo, backspace, CR, LF or CR LF as terminator, Ctrl-U
/// and Ctrl-C, and a length limit.
///
/// It keeps one byte more than [`MAX_LINE_BYTES`] so that [`parse`] sees an overlong line as
/// overlong; bytes beyond that are counted (so backspace stays in step with what the operator
/// typed) but neither stored nor echoed.
#[derive(Debug, Clone)]
pub struct LineEditor {
    bytes: [u8; MAX_LINE_BYTES + 1],
    len: usize,
    /// Bytes typed past [`MAX_LINE_BYTES`] (the first of them is stored, none is echoed).
    hidden: usize,
    /// The previous byte was CR, so an LF right after it ends nothing (CR LF is one end).
    after_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    /// An empty editor.
    pub const fn new() -> Self {
        Self {
            bytes: [0; MAX_LINE_BYTES + 1],
            len: 0,
            hidden: 0,
            after_cr: false,
        }
    }

    /// The line typed so far (after [`Edit::Line`]: the finished line, no terminator).
    pub fn line(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Forgets the line (keeps the CR LF state, so the LF of a CR LF is still swallowed).
    pub fn clear(&mut self) {
        self.len = 0;
        self.hidden = 0;
    }

    /// Takes one received byte, echoing its effect to `echo`.
    pub fn feed(&mut self, byte: u8, echo: &mut dyn Write) -> Result<Edit, fmt::Error> {
        let after_cr = core::mem::replace(&mut self.after_cr, byte == b'\r');
        match byte {
            b'\n' if after_cr => Ok(Edit::Pending),
            b'\r' | b'\n' => {
                echo.write_char('\n')?;
                Ok(Edit::Line)
            }
            BACKSPACE | DELETE => {
                if self.hidden > 0 {
                    self.hidden -= 1;
                    if self.hidden == 0 {
                        self.len -= 1;
                    }
                } else if self.len > 0 {
                    self.len -= 1;
                    echo.write_str("\x08 \x08")?;
                }
                Ok(Edit::Pending)
            }
            CTRL_U => {
                // Only the first MAX_LINE_BYTES bytes were ever shown.
                for _ in 0..self.len.min(MAX_LINE_BYTES) {
                    echo.write_str("\x08 \x08")?;
                }
                self.clear();
                Ok(Edit::Pending)
            }
            CTRL_C => {
                self.clear();
                echo.write_str("^C\n")?;
                Ok(Edit::Cancelled)
            }
            _ => {
                if self.len < MAX_LINE_BYTES {
                    self.bytes[self.len] = byte;
                    self.len += 1;
                    echo.write_char(shown(byte))?;
                } else {
                    if self.hidden == 0 {
                        self.bytes[self.len] = byte;
                        self.len += 1;
                    }
                    self.hidden = self.hidden.saturating_add(1);
                }
                Ok(Edit::Pending)
            }
        }
    }

    /// Writes the prompt and the line typed so far (after other output interrupted them).
    pub fn redraw(&self, out: &mut dyn Write) -> fmt::Result {
        out.write_str(PROMPT)?;
        for &byte in &self.bytes[..self.len.min(MAX_LINE_BYTES)] {
            out.write_char(shown(byte))?;
        }
        Ok(())
    }
}

/// How a stored byte is echoed: printable ASCII as itself, tab as a space, anything else as
/// `?` (one column each, so backspace erases exactly what it removes).
fn shown(byte: u8) -> char {
    match byte {
        b'\t' => ' ',
        b' '..=b'~' => char::from(byte),
        _ => '?',
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;
    use proptest::strategy::Strategy as _;

    /// A view that records every call and answers with a marker line.
    #[derive(Debug, Default)]
    struct RecordingView {
        calls: Vec<String>,
    }

    impl RecordingView {
        fn answer(&self, name: &str, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "{name} answered")
        }
    }

    impl OperatorView for RecordingView {
        fn vms(&self, out: &mut dyn Write) -> fmt::Result {
            self.answer("vms", out)
        }
        fn stats(&self, out: &mut dyn Write) -> fmt::Result {
            self.answer("stats", out)
        }
        fn ksm(&self, out: &mut dyn Write) -> fmt::Result {
            self.answer("ksm", out)
        }
        fn balloon(&mut self, vm: &str, mib: u64, out: &mut dyn Write) -> fmt::Result {
            self.calls.push(alloc::format!("balloon {vm} {mib}"));
            self.answer("balloon", out)
        }
        fn swap(&self, out: &mut dyn Write) -> fmt::Result {
            self.answer("swap", out)
        }
        fn idle(&self, vm: &str, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "idle {vm} answered")
        }
    }

    fn run(line: &str) -> (String, Vec<String>) {
        let mut view = RecordingView::default();
        let mut out = String::new();
        execute(line.as_bytes(), &mut view, &mut out).unwrap();
        (out, view.calls)
    }

    fn error_of(line: &[u8]) -> String {
        alloc::format!("{}", parse(line).unwrap_err())
    }

    #[test]
    fn vm_states_read_plainly() {
        let show = |s: VmState<'_>| alloc::format!("{s}");
        assert_eq!(show(VmState::Running), "running");
        assert_eq!(
            show(VmState::Stuck { quiet_ms: 1500 }),
            "stuck (no progress for 1500 ms)"
        );
        assert_eq!(show(VmState::Exited(0)), "exited 0");
        assert_eq!(show(VmState::Exited(3)), "exited with an error (3)");
        assert_eq!(
            show(VmState::Stopped("watchdog: no progress")),
            "stopped: watchdog: no progress"
        );
        let long = "é".repeat(100);
        let shown = show(VmState::Stopped(&long));
        assert!(shown.ends_with("..."));
        assert!(shown.len() <= "stopped: ".len() + STATE_REASON_BYTES + 3);
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(b"help"), Ok(Some(Command::Help)));
        assert_eq!(parse(b"vms"), Ok(Some(Command::Vms)));
        assert_eq!(parse(b"stats"), Ok(Some(Command::Stats)));
        assert_eq!(parse(b"ksm"), Ok(Some(Command::Ksm)));
        assert_eq!(parse(b"swap"), Ok(Some(Command::Swap)));
        assert_eq!(
            parse(b"balloon vm1 64"),
            Ok(Some(Command::Balloon { vm: "vm1", mib: 64 }))
        );
        assert_eq!(
            parse(b"idle dedup-0"),
            Ok(Some(Command::Idle { vm: "dedup-0" }))
        );
    }

    #[test]
    fn keywords_ignore_case_and_extra_blanks_but_names_keep_case() {
        assert_eq!(parse(b"  KSM\t "), Ok(Some(Command::Ksm)));
        assert_eq!(
            parse(b"Balloon\tVmA   0\r\n"),
            Ok(Some(Command::Balloon { vm: "VmA", mib: 0 }))
        );
    }

    #[test]
    fn blank_lines_are_no_command_and_print_nothing() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b" \t  "), Ok(None));
        assert_eq!(run("   "), (String::new(), Vec::new()));
    }

    #[test]
    fn unknown_commands_are_named_and_point_to_help() {
        assert_eq!(
            parse(b"reboot now"),
            Err(ConsoleError::UnknownCommand("reboot"))
        );
        assert_eq!(
            error_of(b"frobnicate"),
            "unknown command 'frobnicate'; type 'help' for the list"
        );
        // A long word is cut so the message stays short.
        let long = "x".repeat(100);
        let message = error_of(long.as_bytes());
        assert!(message.starts_with("unknown command 'xxxxxxxxxxxxxxxxxxxxxxxx...'"));
        assert!(message.len() < 80, "{message}");
    }

    #[test]
    fn missing_arguments_name_the_argument_and_the_usage() {
        assert_eq!(
            parse(b"balloon"),
            Err(ConsoleError::MissingArgument {
                command: "balloon",
                argument: "<vm>"
            })
        );
        assert_eq!(
            error_of(b"balloon vm0"),
            "balloon: missing <MiB>; usage: balloon <vm> <MiB>"
        );
        assert_eq!(error_of(b"idle"), "idle: missing <vm>; usage: idle <vm>");
    }

    #[test]
    fn extra_arguments_are_rejected_for_every_command() {
        for line in [
            "help me",
            "vms all",
            "stats now",
            "ksm 1",
            "swap out",
            "idle vm0 vm1",
            "balloon vm0 8 9",
        ] {
            let error = parse(line.as_bytes()).unwrap_err();
            assert!(
                matches!(error, ConsoleError::ExtraArgument { .. }),
                "{line}: {error:?}"
            );
        }
        assert_eq!(
            error_of(b"vms all"),
            "vms: unexpected argument 'all'; usage: vms"
        );
    }

    #[test]
    fn bad_mib_values_are_rejected() {
        for word in [
            "-1",
            "+8",
            "8M",
            "0x10",
            "1.5",
            "eight",
            "18446744073709551616",
        ] {
            let line = alloc::format!("balloon vm0 {word}");
            assert_eq!(
                parse(line.as_bytes()),
                Err(ConsoleError::BadNumber {
                    command: "balloon",
                    text: word
                }),
                "{word}"
            );
        }
        assert_eq!(
            error_of(b"balloon vm0 lots"),
            "balloon: 'lots' is not a decimal number; usage: balloon <vm> <MiB>"
        );
        assert_eq!(
            parse(b"balloon vm0 1048577"),
            Err(ConsoleError::BalloonTooLarge { mib: 1_048_577 })
        );
        assert_eq!(
            parse(b"balloon vm0 1048576"),
            Ok(Some(Command::Balloon {
                vm: "vm0",
                mib: MAX_BALLOON_MIB
            }))
        );
    }

    #[test]
    fn long_vm_names_are_rejected() {
        let name = "v".repeat(MAX_VM_NAME_BYTES);
        let line = alloc::format!("idle {name}");
        assert_eq!(
            parse(line.as_bytes()),
            Ok(Some(Command::Idle { vm: &name }))
        );
        let line = alloc::format!("idle {name}w");
        assert_eq!(
            parse(line.as_bytes()),
            Err(ConsoleError::VmNameTooLong { command: "idle" })
        );
    }

    #[test]
    fn overlong_lines_and_bad_bytes_are_rejected() {
        let fits = alloc::format!("idle {}", " ".repeat(MAX_LINE_BYTES - 8) + "vm0");
        assert_eq!(fits.len(), MAX_LINE_BYTES);
        assert_eq!(
            parse(fits.as_bytes()),
            Ok(Some(Command::Idle { vm: "vm0" }))
        );
        let too_long = alloc::format!("{fits} ");
        assert_eq!(parse(too_long.as_bytes()), Err(ConsoleError::LineTooLong));
        assert_eq!(
            parse(b"vms\x1b[A"),
            Err(ConsoleError::NonPrintable {
                column: 4,
                byte: 0x1b
            })
        );
        assert_eq!(
            error_of("idle v\u{e9}".as_bytes()),
            "non-printable byte 0xc3 at column 7, line ignored"
        );
        assert_eq!(
            parse(b"vms\r\nvms"),
            Err(ConsoleError::NonPrintable {
                column: 4,
                byte: b'\r'
            })
        );
    }

    #[test]
    fn execute_dispatches_to_the_view() {
        assert_eq!(run("vms").0, "vms answered\n");
        assert_eq!(run("stats").0, "stats answered\n");
        assert_eq!(run("ksm").0, "ksm answered\n");
        assert_eq!(run("swap").0, "swap answered\n");
        assert_eq!(run("idle vm2").0, "idle vm2 answered\n");
        assert_eq!(
            run("balloon vm1 8"),
            (
                "balloon answered\n".into(),
                alloc::vec!["balloon vm1 8".into()]
            )
        );
    }

    #[test]
    fn execute_answers_errors_with_one_line_and_leaves_the_view_alone() {
        let (out, calls) = run("balloon vm1 much");
        assert_eq!(
            out,
            "error: balloon: 'much' is not a decimal number; usage: balloon <vm> <MiB>\n"
        );
        assert!(calls.is_empty());
    }

    #[test]
    fn help_lists_every_command_with_its_usage() {
        let (out, _) = run("help");
        assert_eq!(out.lines().count(), 1 + COMMANDS.len());
        for usage in [
            "help",
            "vms",
            "stats",
            "ksm",
            "balloon <vm> <MiB>",
            "swap",
            "idle <vm>",
        ] {
            assert!(
                out.lines().any(|l| l.trim_start().starts_with(usage)),
                "{usage} missing from:\n{out}"
            );
        }
    }

    /// Feeds `input` to `editor`, returning the echo and every finished or cancelled line.
    fn type_into(editor: &mut LineEditor, input: &[u8]) -> (String, Vec<Result<Vec<u8>, ()>>) {
        let mut echo = String::new();
        let mut lines = Vec::new();
        for &byte in input {
            match editor.feed(byte, &mut echo).unwrap() {
                Edit::Pending => {}
                Edit::Line => {
                    lines.push(Ok(editor.line().to_vec()));
                    editor.clear();
                }
                Edit::Cancelled => lines.push(Err(())),
            }
        }
        (echo, lines)
    }

    #[test]
    fn editor_ends_lines_on_cr_lf_and_cr_lf() {
        let mut editor = LineEditor::new();
        let (echo, lines) = type_into(&mut editor, b"vms\rksm\nswap\r\nhelp\n\n");
        assert_eq!(
            lines,
            [&b"vms"[..], b"ksm", b"swap", b"help", b""].map(|l| Ok(l.to_vec()))
        );
        assert_eq!(echo, "vms\nksm\nswap\nhelp\n\n");
    }

    #[test]
    fn editor_backspace_and_delete_erase_one_byte_and_stop_at_the_start() {
        let mut editor = LineEditor::new();
        let (echo, lines) = type_into(&mut editor, b"\x08vmx\x7fs\x08\x08\x08\x08ksm\r");
        assert_eq!(lines, [Ok(b"ksm".to_vec())]);
        assert_eq!(echo, "vmx\x08 \x08s\x08 \x08\x08 \x08\x08 \x08ksm\n");
    }

    #[test]
    fn editor_ctrl_c_drops_the_line_and_ctrl_u_erases_it() {
        let mut editor = LineEditor::new();
        let (echo, lines) = type_into(&mut editor, b"vms\x03ks\x15swap\n");
        assert_eq!(lines, [Err(()), Ok(b"swap".to_vec())]);
        assert_eq!(echo, "vms^C\nks\x08 \x08\x08 \x08swap\n");
    }

    #[test]
    fn editor_marks_overlong_lines_and_keeps_backspace_in_step() {
        let mut editor = LineEditor::new();
        let mut input = alloc::vec![b'a'; MAX_LINE_BYTES + 5];
        input.push(b'\n');
        let (echo, lines) = type_into(&mut editor, &input);
        assert_eq!(
            echo.len(),
            MAX_LINE_BYTES + 1,
            "only the kept bytes are echoed"
        );
        let line = lines[0].clone().unwrap();
        assert_eq!(parse(&line), Err(ConsoleError::LineTooLong));
        // Typing 3 too many then erasing them leaves a full, valid line.
        let mut input = alloc::format!("idle {}", "v".repeat(MAX_LINE_BYTES - 5)).into_bytes();
        input.extend_from_slice(b"xyz\x7f\x7f\x7f\r");
        let (_, lines) = type_into(&mut editor, &input);
        let line = lines[0].clone().unwrap();
        assert_eq!(line.len(), MAX_LINE_BYTES);
        assert_eq!(
            parse(&line),
            Err(ConsoleError::VmNameTooLong { command: "idle" })
        );
    }

    #[test]
    fn editor_echoes_control_bytes_as_question_marks_and_redraws() {
        let mut editor = LineEditor::new();
        let (echo, _) = type_into(&mut editor, b"v\x1b\tm");
        assert_eq!(echo, "v? m");
        let mut screen = String::new();
        editor.redraw(&mut screen).unwrap();
        assert_eq!(screen, "mipsvisor> v? m");
        assert_eq!(
            parse(editor.line()),
            Err(ConsoleError::NonPrintable {
                column: 2,
                byte: 0x1b
            })
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes at all: parse and execute return, and the answer is either nothing, the
        /// help text, one view answer, or exactly one `error:` line.
        #[test]
        fn arbitrary_lines_never_panic(line in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut view = RecordingView::default();
            let mut out = String::new();
            execute(&line, &mut view, &mut out).unwrap();
            match parse(&line) {
                Err(_) => {
                    proptest::prop_assert!(out.starts_with("error: "));
                    proptest::prop_assert_eq!(out.lines().count(), 1);
                    proptest::prop_assert!(view.calls.is_empty());
                }
                Ok(None) => proptest::prop_assert!(out.is_empty()),
                Ok(Some(_)) => proptest::prop_assert!(out.ends_with('\n')),
            }
        }

        /// Word-shaped input (keywords, names, numbers, junk) reaches deeper into the parser.
        #[test]
        fn arbitrary_words_never_panic(words in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::sample::select(alloc::vec!["help", "vms", "stats", "ksm", "balloon",
                    "swap", "idle", "BALLOON", "vm0", "8", "0", "99999999999999999999", "\t"])
                    .prop_map(String::from),
                "[ -~]{0,40}",
            ], 0..6)) {
            let line = words.join(" ");
            let mut view = RecordingView::default();
            let mut out = String::new();
            execute(line.as_bytes(), &mut view, &mut out).unwrap();
            proptest::prop_assert!(out.is_empty() || out.ends_with('\n'));
        }

        /// The editor takes any byte stream; a line it hands out is never longer than one
        /// byte past the limit, and printable text followed by CR comes back unchanged.
        #[test]
        fn editor_handles_any_bytes(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            text in "[ -~]{0,128}",
        ) {
            let mut editor = LineEditor::new();
            let mut echo = String::new();
            for &byte in &noise {
                if editor.feed(byte, &mut echo).unwrap() == Edit::Line {
                    proptest::prop_assert!(editor.line().len() <= MAX_LINE_BYTES + 1);
                    editor.clear();
                }
            }
            editor.feed(CTRL_C, &mut echo).unwrap();
            for byte in text.bytes() {
                proptest::prop_assert_eq!(editor.feed(byte, &mut echo).unwrap(), Edit::Pending);
            }
            proptest::prop_assert_eq!(editor.feed(b'\r', &mut echo).unwrap(), Edit::Line);
            proptest::prop_assert_eq!(editor.line(), text.as_bytes());
        }
    }
}
