//! A VM's hypercall console as the host sees it: the byte stream cut into display pieces,
//! the whole lines a scenario inspects afterwards, and the isolation scenario's tally of
//! `ATTEMPT`/`OUTCOME` lines.
//!
//! The rules make the record independent of how a guest shapes its output:
//! - every byte that is not printable ASCII or a tab shows as `\xNN` (a CR directly before
//!   LF is dropped), so control bytes can neither hide text nor make one line look like
//!   another;
//! - a line is recorded only from its real start (after a newline), when it begins with one
//!   of the recorded words at column 0; the pieces a long line is displayed in never start
//!   a record of their own, so a guest cannot forge a line by padding;
//! - a recorded line keeps up to [`RECORD_MAX_CHARS`] characters; a longer one is kept cut
//!   and marked, never dropped, so a long line cannot hide either;
//! - when the record is full, further lines are counted as dropped, and the tally refuses
//!   to judge a record with drops.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Characters of a recorded line kept; the rest is cut and marked with [`CUT_MARK`].
pub const RECORD_MAX_CHARS: usize = 1024;
/// Appended to a recorded line that was cut.
pub const CUT_MARK: &str = " [cut]";

/// The console transcript of one VM.
#[derive(Debug)]
pub struct Transcript {
    words: &'static [&'static str],
    max_piece: usize,
    max_records: usize,
    /// Display text of the current piece.
    piece: String,
    /// The current piece continues a line that was already shown in part.
    continued: bool,
    /// The current line so far (escaped), up to [`RECORD_MAX_CHARS`].
    line: String,
    /// The current line is longer than what `line` kept.
    line_cut: bool,
    /// A CR arrived and the next byte decides whether it is shown.
    pending_cr: bool,
    recorded: Vec<String>,
    dropped: u64,
}

impl Transcript {
    /// A transcript recording lines that start with one of `words`, showing lines in pieces
    /// of at most `max_piece` characters (at least 8), keeping at most `max_records` lines.
    pub fn new(words: &'static [&'static str], max_piece: usize, max_records: usize) -> Self {
        Self {
            words,
            max_piece: max_piece.max(8),
            max_records,
            piece: String::new(),
            continued: false,
            line: String::new(),
            line_cut: false,
            pending_cr: false,
            recorded: Vec::new(),
            dropped: 0,
        }
    }

    /// Adds console bytes. Each finished display piece goes to `show(piece, continued)`,
    /// where `continued` says the piece is not the start of its line.
    pub fn push(&mut self, bytes: &[u8], mut show: impl FnMut(&str, bool)) {
        for &byte in bytes {
            if core::mem::take(&mut self.pending_cr) && byte != b'\n' {
                self.add_text("\\x0d", &mut show);
            }
            match byte {
                b'\n' => self.end_line(&mut show),
                b'\r' => self.pending_cr = true,
                b'\t' | 0x20..=0x7e => {
                    let mut utf8 = [0u8; 4];
                    self.add_text(char::from(byte).encode_utf8(&mut utf8), &mut show);
                }
                _ => self.add_text(&format!("\\x{byte:02x}"), &mut show),
            }
        }
    }

    /// Ends a partial line as if a newline followed (when the VM stops).
    pub fn flush(&mut self, mut show: impl FnMut(&str, bool)) {
        if self.pending_cr {
            self.pending_cr = false;
            self.add_text("\\x0d", &mut show);
        }
        if !self.piece.is_empty() || !self.line.is_empty() {
            self.end_line(&mut show);
        }
    }

    /// The recorded lines, oldest first.
    pub fn recorded(&self) -> &[String] {
        &self.recorded
    }

    /// Lines that should have been recorded but found the record full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn add_text(&mut self, text: &str, show: &mut impl FnMut(&str, bool)) {
        if self.line.len() + text.len() <= RECORD_MAX_CHARS {
            self.line.push_str(text);
        } else {
            self.line_cut = true;
        }
        // An escape sequence is never split across pieces.
        if !self.piece.is_empty() && self.piece.len() + text.len() > self.max_piece {
            show(&self.piece, self.continued);
            self.piece.clear();
            self.continued = true;
        }
        self.piece.push_str(text);
    }

    fn end_line(&mut self, show: &mut impl FnMut(&str, bool)) {
        if !self.piece.is_empty() || !self.continued {
            show(&self.piece, self.continued);
        }
        self.piece.clear();
        self.continued = false;
        let mut line = core::mem::take(&mut self.line);
        if core::mem::take(&mut self.line_cut) {
            line.push_str(CUT_MARK);
        }
        if self.is_recorded(&line) {
            if self.recorded.len() < self.max_records {
                self.recorded.push(line);
            } else {
                self.dropped += 1;
            }
        }
    }

    fn is_recorded(&self, line: &str) -> bool {
        self.words.iter().any(|word| {
            line.strip_prefix(word)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
        })
    }
}

/// What the `ATTEMPT`/`OUTCOME` lines of a hostile guest's transcript say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttemptTally {
    /// `ATTEMPT <n> <name>` lines.
    pub attempted: u64,
    /// Attempts closed by their own `OUTCOME <n> <name>: ...` line without `BREACH`.
    pub contained: u64,
    /// Outcomes that reported `BREACH`, or were cut (too long to judge).
    pub breaches: u64,
    /// Lines that do not fit the protocol: an `OUTCOME` that does not match the open
    /// attempt, an `ATTEMPT` without number and name.
    pub malformed: u64,
    /// The attempt announced last and not closed: number and name.
    pub open: Option<(String, String)>,
}

/// Tallies recorded console lines (see [`Transcript`]): `ATTEMPT <n> <name> [...]` opens an
/// attempt (an attempt still open is left uncontained); `OUTCOME <n> <name>: <text>` closes
/// it when number and name match.
pub fn tally_attempts(lines: &[String]) -> AttemptTally {
    let mut tally = AttemptTally::default();
    for line in lines {
        let mut words = line.split(' ');
        match words.next() {
            Some("ATTEMPT") => {
                tally.attempted += 1;
                tally.open = match (words.next(), words.next()) {
                    (Some(number), Some(name)) if !number.is_empty() && !name.is_empty() => {
                        Some((String::from(number), String::from(name)))
                    }
                    _ => {
                        tally.malformed += 1;
                        None
                    }
                };
            }
            Some("OUTCOME") => {
                let number = words.next().unwrap_or("");
                let name = words.next().unwrap_or("");
                let matches = tally.open.as_ref().is_some_and(|(open_number, open_name)| {
                    open_number == number && name.strip_suffix(':') == Some(open_name.as_str())
                });
                if !matches {
                    tally.malformed += 1;
                    continue;
                }
                tally.open = None;
                if line.contains("BREACH") || line.ends_with(CUT_MARK) {
                    tally.breaches += 1;
                } else {
                    tally.contained += 1;
                }
            }
            _ => {}
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    const WORDS: &[&str] = &["ATTEMPT", "OUTCOME", "HOSTILE"];

    /// Feeds `bytes` and returns the shown pieces (with a `+` for continuations).
    fn feed(t: &mut Transcript, bytes: &[u8]) -> Vec<String> {
        let mut shown = Vec::new();
        t.push(bytes, |piece, continued| {
            shown.push(format!("{}{piece}", if continued { "+" } else { "" }));
        });
        shown
    }

    #[test]
    fn whole_lines_are_shown_and_recorded_by_first_word() {
        let mut t = Transcript::new(WORDS, 200, 16);
        let shown = feed(
            &mut t,
            b"hello\nATTEMPT 1 x\r\nOUTCOME 1 x: fine\nATTEMPTED 2\n",
        );
        assert_eq!(
            shown,
            ["hello", "ATTEMPT 1 x", "OUTCOME 1 x: fine", "ATTEMPTED 2"]
        );
        assert_eq!(t.recorded(), ["ATTEMPT 1 x", "OUTCOME 1 x: fine"]);
        assert_eq!(t.dropped(), 0);
    }

    #[test]
    fn a_line_split_across_writes_is_one_line() {
        let mut t = Transcript::new(WORDS, 200, 16);
        assert!(feed(&mut t, b"ATTE").is_empty());
        assert!(feed(&mut t, b"MPT 3 name").is_empty());
        assert_eq!(feed(&mut t, b"\n"), ["ATTEMPT 3 name"]);
        assert_eq!(t.recorded(), ["ATTEMPT 3 name"]);
    }

    #[test]
    fn padding_cannot_forge_a_line_start() {
        let mut t = Transcript::new(WORDS, 20, 16);
        let mut bytes = vec![b'x'; 20];
        bytes.extend_from_slice(b"OUTCOME 1 x: forged\n");
        let shown = feed(&mut t, &bytes);
        assert_eq!(shown, ["xxxxxxxxxxxxxxxxxxxx", "+OUTCOME 1 x: forged"]);
        assert!(t.recorded().is_empty(), "a continuation is never a record");
    }

    #[test]
    fn long_lines_are_recorded_not_hidden() {
        let mut t = Transcript::new(WORDS, 20, 16);
        let long = format!("ATTEMPT 7 long {}\n", "y".repeat(100));
        let shown = feed(&mut t, long.as_bytes());
        assert_eq!(shown.len(), 6, "shown in pieces: {shown:?}");
        assert_eq!(t.recorded(), [long.trim_end()]);
        // Beyond the record limit the line is kept cut and marked.
        let huge = format!("OUTCOME 7 long: {}\n", "z".repeat(2 * RECORD_MAX_CHARS));
        feed(&mut t, huge.as_bytes());
        let kept = &t.recorded()[1];
        assert!(kept.ends_with(CUT_MARK));
        assert!(kept.len() <= RECORD_MAX_CHARS + CUT_MARK.len());
    }

    #[test]
    fn control_bytes_are_visible_and_never_make_a_record() {
        let mut t = Transcript::new(WORDS, 200, 16);
        let shown = feed(
            &mut t,
            b"\rOUTCOME 1 x: a\n\x1b[2KATTEMPT 9 y\n\tATTEMPT 8 z\n OUTCOME 1 x: b\nOUT\x00COME\n",
        );
        assert_eq!(
            shown,
            [
                "\\x0dOUTCOME 1 x: a",
                "\\x1b[2KATTEMPT 9 y",
                "\tATTEMPT 8 z",
                " OUTCOME 1 x: b",
                "OUT\\x00COME"
            ]
        );
        assert!(t.recorded().is_empty());
        // A CR inside a line is shown, a CR before LF is not.
        let shown = feed(&mut t, b"ATTEMPT 1 a\rb\r\n");
        assert_eq!(shown, ["ATTEMPT 1 a\\x0db"]);
    }

    #[test]
    fn escapes_are_not_split_across_pieces() {
        let mut t = Transcript::new(WORDS, 8, 16);
        let shown = feed(&mut t, b"abcdef\x01\x02\n");
        assert_eq!(shown, ["abcdef", "+\\x01\\x02"]);
    }

    #[test]
    fn full_record_counts_drops() {
        let mut t = Transcript::new(WORDS, 200, 2);
        feed(
            &mut t,
            b"ATTEMPT 1 a\nOUTCOME 1 a: ok\nATTEMPT 2 b\nHOSTILE x\n",
        );
        assert_eq!(t.recorded().len(), 2);
        assert_eq!(t.dropped(), 2);
    }

    #[test]
    fn flush_ends_a_partial_line() {
        let mut t = Transcript::new(WORDS, 200, 4);
        feed(&mut t, b"ATTEMPT 4 runaway\r");
        let mut shown = Vec::new();
        t.flush(|piece, _| shown.push(piece.to_string()));
        assert_eq!(shown, ["ATTEMPT 4 runaway\\x0d"]);
        assert_eq!(t.recorded(), ["ATTEMPT 4 runaway\\x0d"]);
        let mut again = Vec::new();
        t.flush(|piece, _| again.push(piece.to_string()));
        assert!(again.is_empty(), "nothing left to flush");
    }

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn tally_counts_matching_outcomes() {
        let t = tally_attempts(&lines(&[
            "ATTEMPT 1 a",
            "OUTCOME 1 a: trapped",
            "ATTEMPT 2 b",
            "OUTCOME 2 b: BREACH stuck",
            "ATTEMPT 3 c",
        ]));
        assert_eq!(t.attempted, 3);
        assert_eq!(t.contained, 1);
        assert_eq!(t.breaches, 1);
        assert_eq!(t.malformed, 0);
        assert_eq!(t.open, Some(("3".to_string(), "c".to_string())));
    }

    #[test]
    fn tally_refuses_outcomes_of_other_attempts() {
        let t = tally_attempts(&lines(&[
            "ATTEMPT 1 a",
            "OUTCOME 2 a: wrong number",
            "OUTCOME 1 b: wrong name",
            "OUTCOME 1 a wrong form",
            "ATTEMPT 2 b",
            "OUTCOME 1 a: closes nothing",
            "OUTCOME 2 b: ok",
            "OUTCOME 2 b: twice",
            "ATTEMPT",
        ]));
        assert_eq!(t.attempted, 3);
        assert_eq!(t.contained, 1, "only attempt 2 is closed");
        assert_eq!(t.malformed, 6);
        assert_eq!(t.open, None);
    }

    #[test]
    fn a_cut_outcome_is_not_contained() {
        let cut = format!("OUTCOME 1 a: {}{CUT_MARK}", "x".repeat(10));
        let t = tally_attempts(&lines(&["ATTEMPT 1 a", cut.as_str()]));
        assert_eq!((t.contained, t.breaches), (0, 1));
    }

    #[test]
    fn transcript_and_tally_together_resist_forgery() {
        let mut t = Transcript::new(WORDS, 32, 64);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"ATTEMPT 1 forge\n");
        bytes.extend_from_slice(&[b'-'; 32]);
        bytes.extend_from_slice(b"OUTCOME 1 forge: fine\n");
        bytes.extend_from_slice(b"\rOUTCOME 1 forge: fine\n");
        bytes.extend_from_slice(b"OUTCOME 1 forge: BREACH seen\n");
        feed(&mut t, &bytes);
        let tally = tally_attempts(t.recorded());
        assert_eq!(tally.attempted, 1);
        assert_eq!(tally.contained, 0);
        assert_eq!(tally.breaches, 1);
    }
}
