//! Line framing for serial_line buses: bytes in, whole text lines out.
//!
//! Owns the terminator search, the line-length bound and the verdict on what is text. Pure:
//! no I/O, no clock, no knowledge of devices or points, so it can be fed arbitrary bytes in
//! tests. Memory is bounded by `max_line` plus whatever one `push` hands over.
//!
//! Rules: a line ends at the terminator; a `\r` before it (or a `\n` after a `\r`
//! terminator) is dropped, so `\r\n` sensors work with either setting. Empty lines are
//! skipped silently. A line longer than `max_line` is reported once as [`Frame::Overlong`]
//! and its bytes are dropped up to the next terminator. A line that is not UTF-8, or holds
//! control characters other than tab (binary noise, a wrong baud rate), is reported as
//! [`Frame::Garbage`]. Nothing here panics on any input.

/// What the framer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Line(String),
    /// A line longer than `max_line`; dropped up to the next terminator.
    Overlong,
    /// A line that is not text.
    Garbage,
}

#[derive(Debug, Clone)]
pub struct LineCodec {
    terminator: Vec<u8>,
    max_line: usize,
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no terminator start (resumes the search after a push).
    scanned: usize,
    /// Inside an over-long line: drop bytes until the next terminator.
    discarding: bool,
}

impl LineCodec {
    /// `terminator` must not be empty (validation guarantees it; an empty one is taken
    /// as `\n` rather than looping).
    pub fn new(terminator: &[u8], max_line: usize) -> Self {
        let terminator = if terminator.is_empty() {
            b"\n".to_vec()
        } else {
            terminator.to_vec()
        };
        LineCodec {
            terminator,
            max_line,
            buf: Vec::with_capacity(max_line.min(4096) + 8),
            scanned: 0,
            discarding: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets everything buffered (before a query: a late answer must not be taken for
    /// the next one).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.scanned = 0;
        self.discarding = false;
    }

    /// The next frame from the bytes pushed so far, or `None` until more arrive.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let tail = self.terminator.len() - 1;
        loop {
            let from = self.scanned.saturating_sub(tail);
            let found = find(&self.buf[from..], &self.terminator).map(|i| from + i);
            let Some(end) = found else {
                self.scanned = self.buf.len();
                // Room for the line, a stripped `\r` and a terminator split across reads.
                let allowance = self.max_line + 1 + tail;
                if self.discarding || self.buf.len() > allowance {
                    // Keep only what might be the start of a terminator.
                    let keep_from = self.buf.len().saturating_sub(tail);
                    self.buf.drain(..keep_from);
                    self.scanned = self.buf.len();
                    if !self.discarding {
                        self.discarding = true;
                        return Some(Frame::Overlong);
                    }
                }
                return None;
            };
            let line: Vec<u8> = self.buf.drain(..end + self.terminator.len()).collect();
            self.scanned = 0;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            let mut line = &line[..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if let [b'\n', rest @ ..] = line {
                line = rest;
            }
            if line.is_empty() {
                continue;
            }
            if line.len() > self.max_line {
                return Some(Frame::Overlong);
            }
            return Some(match std::str::from_utf8(line) {
                Ok(text) if !text.chars().any(|c| c.is_control() && c != '\t') => {
                    Frame::Line(text.to_owned())
                }
                _ => Frame::Garbage,
            });
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() == 1 {
        return haystack.iter().position(|&b| b == needle[0]);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(codec: &mut LineCodec, bytes: &[u8]) -> Vec<Frame> {
        codec.push(bytes);
        std::iter::from_fn(|| codec.next_frame()).collect()
    }

    fn line(s: &str) -> Frame {
        Frame::Line(s.to_owned())
    }

    #[test]
    fn lines_end_at_lf_and_crlf_and_empty_lines_vanish() {
        let mut c = LineCodec::new(b"\n", 64);
        assert_eq!(
            frames(&mut c, b"a=1\r\nb=2\n\r\n\nc"),
            vec![line("a=1"), line("b=2")]
        );
        assert_eq!(frames(&mut c, b"=3\n"), vec![line("c=3")]);
    }

    #[test]
    fn a_cr_terminator_tolerates_crlf_sensors() {
        let mut c = LineCodec::new(b"\r", 64);
        assert_eq!(frames(&mut c, b"x\r\ny\r\n"), vec![line("x"), line("y")]);
    }

    #[test]
    fn a_multi_byte_terminator_split_across_reads_is_found() {
        let mut c = LineCodec::new(b"\x03\x04", 64);
        assert_eq!(frames(&mut c, b"one\x03"), vec![]);
        assert_eq!(
            frames(&mut c, b"\x04two\x03\x04"),
            vec![line("one"), line("two")]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_the_next_line_survives() {
        let mut c = LineCodec::new(b"\n", 8);
        assert_eq!(frames(&mut c, b"0123456789"), vec![Frame::Overlong]);
        assert_eq!(frames(&mut c, b"abcdefghijkl"), vec![]);
        assert_eq!(frames(&mut c, b"xyz\nok\n"), vec![line("ok")]);
        // Whole in one read: still overlong, the neighbours intact.
        assert_eq!(
            frames(&mut c, b"a\n0123456789\nb\n"),
            vec![line("a"), Frame::Overlong, line("b")]
        );
        // Exactly max_line, with a CR, is fine.
        assert_eq!(frames(&mut c, b"01234567\r\n"), vec![line("01234567")]);
    }

    #[test]
    fn binary_noise_and_broken_utf8_are_garbage() {
        let mut c = LineCodec::new(b"\n", 64);
        assert_eq!(
            frames(&mut c, b"\x00\x01\x02\n\xff\xfe\nT=1\tC\nok\n"),
            vec![Frame::Garbage, Frame::Garbage, line("T=1\tC"), line("ok")]
        );
    }

    #[test]
    fn reset_drops_a_half_line() {
        let mut c = LineCodec::new(b"\n", 64);
        assert_eq!(frames(&mut c, b"late answ"), vec![]);
        c.reset();
        assert_eq!(frames(&mut c, b"fresh\n"), vec![line("fresh")]);
    }
}
