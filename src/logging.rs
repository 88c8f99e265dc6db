//! Log output: tracing to stderr as text or JSON lines that text from the network cannot forge.
//!
//! Two guarantees, whatever a client sends (names, SDP, candidates quoted in errors):
//! - one event is one line: CR, LF and every other control character inside an event, and
//!   Unicode format and separator characters (bidi overrides, zero-width characters, U+2028),
//!   are written escaped (`\r`, `\n`, `\u202e`; escapes JSON reads back as the same text);
//! - ANSI colour codes only go to a terminal (`NO_COLOR` turns them off there too), never to
//!   journald or a log file.

use crate::config::LogFormat;
use std::io::{IsTerminal, Write};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Directives added to a log filter that names no webrtc-rs target (`rtc`, `rtc_*`, `webrtc`,
/// matched by prefix): its internals log only warnings, and its ICE agent only errors. A remote
/// can make the ICE agent warn every 200 ms for as long as a session lives ("pingAllCandidates
/// called with no candidate pairs": ~150 lines per dead session), which recbot must not turn
/// into log volume. A filter that names one of these targets is taken as it is.
pub const QUIET_WEBRTC: &str = "rtc=warn,webrtc=warn,rtc_ice=error";

/// `filter` with [`QUIET_WEBRTC`] unless it names a webrtc-rs target itself.
pub fn with_quiet_webrtc(filter: &str) -> String {
    let names_webrtc = filter.split(',').any(|directive| {
        let target = directive
            .trim()
            .split(['=', '['])
            .next()
            .unwrap_or_default();
        target.starts_with("rtc") || target.starts_with("webrtc")
    });
    if names_webrtc || filter.trim().is_empty() {
        filter.to_owned()
    } else {
        format!("{filter},{QUIET_WEBRTC}")
    }
}

/// Installs the process-wide tracing subscriber: `format` on stderr, `filter` as an
/// `EnvFilter` (`info` when it does not parse), with webrtc-rs kept quiet
/// ([`with_quiet_webrtc`]).
pub fn init(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(with_quiet_webrtc(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(with_quiet_webrtc("info")));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour && format == LogFormat::Text)
        .with_writer(move || EscapingWriter::new(std::io::stderr(), colour));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A writer of whole log events (the fmt layer writes each event with one `write_all`) that
/// escapes what could forge or hide log lines; see [`escape_event`].
pub struct EscapingWriter<W> {
    inner: W,
    keep_esc: bool,
}

impl<W: Write> EscapingWriter<W> {
    /// Writes to `inner`. `keep_esc` lets the formatter's colour codes (SGR sequences,
    /// `ESC [ digits ; m`) through for a terminal; every other ESC is escaped.
    pub fn new(inner: W, keep_esc: bool) -> Self {
        Self { inner, keep_esc }
    }
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner
            .write_all(escape_event(&text, self.keep_esc).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `event` with every control character except TAB and every format, line separator and
/// paragraph separator character escaped, except one final LF and, when `keep_esc`, ESC
/// starting a colour code (SGR: `ESC [ digits and ; m`, which can neither move the cursor nor
/// end a line). The escapes
/// (`\r`, `\n`, `\uXXXX`, surrogate pairs above U+FFFF) are valid inside JSON strings, where
/// they read back as the original text.
pub fn escape_event(event: &str, keep_esc: bool) -> String {
    let (body, end) = match event.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (event, ""),
    };
    let mut out = String::with_capacity(event.len() + 16);
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\t' => out.push(c),
            '\x1b' if keep_esc && sgr_len(&body[at + 1..]) > 0 => {
                let len = sgr_len(&body[at + 1..]);
                out.push(c);
                out.push_str(&body[at + 1..at + 1 + len]);
                // The sequence is ASCII: one char per byte.
                for _ in 0..len {
                    chars.next();
                }
            }
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if matches!(
                c.general_category(),
                GeneralCategory::Control
                    | GeneralCategory::Format
                    | GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
            ) =>
            {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push_str(end);
    out
}

/// The length of the SGR sequence after an ESC at the start of `rest` (`[`, digits and `;`,
/// `m`), or 0.
fn sgr_len(rest: &str) -> usize {
    let Some(params) = rest.strip_prefix('[') else {
        return 0;
    };
    let digits = params
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    if params.as_bytes().get(digits) == Some(&b'm') {
        digits + 2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webrtc_is_quiet_unless_the_filter_names_it() {
        assert_eq!(with_quiet_webrtc("info"), format!("info,{QUIET_WEBRTC}"));
        assert_eq!(
            with_quiet_webrtc("warn,recbot=debug"),
            format!("warn,recbot=debug,{QUIET_WEBRTC}")
        );
        for named in [
            "info,rtc_ice=warn",
            "debug,rtc=debug",
            "webrtc=trace",
            "rtc_dtls[x]=info",
        ] {
            assert_eq!(with_quiet_webrtc(named), named);
        }
        assert!(tracing_subscriber::EnvFilter::try_new(with_quiet_webrtc("info")).is_ok());
    }

    #[test]
    fn one_event_stays_one_line() {
        assert_eq!(
            escape_event("INFO name=a\r\nERROR forged\0\n", false),
            "INFO name=a\\r\\nERROR forged\\u0000\n"
        );
        assert_eq!(
            escape_event(
                "x\u{1b}[31m \u{202e}\u{2066}\u{200b}\u{2028}\u{85} Zoë 李\t.\n",
                false
            ),
            "x\\u001b[31m \\u202e\\u2066\\u200b\\u2028\\u0085 Zoë 李\t.\n"
        );
        assert_eq!(
            escape_event("\u{1b}[2mINFO\u{1b}[0m \u{1b}[1;31mx\u{1b}[m\n", true),
            "\u{1b}[2mINFO\u{1b}[0m \u{1b}[1;31mx\u{1b}[m\n"
        );
        // On a terminal too, only colour codes pass: no cursor moves, clears or titles.
        assert_eq!(
            escape_event("a\u{1b}[2J\u{1b}[1A\u{1b}]0;t\u{7}\u{1b}[\u{1b}", true),
            "a\\u001b[2J\\u001b[1A\\u001b]0;t\\u0007\\u001b[\\u001b"
        );
        // Above U+FFFF: a surrogate pair, as JSON spells it.
        assert_eq!(escape_event("\u{e0001}", false), "\\udb40\\udc01");
    }

    #[test]
    fn json_lines_read_back_as_the_same_text() {
        let line = serde_json::json!({"name": "a\u{202e}b\u{e0001}c"}).to_string() + "\n";
        let escaped = escape_event(&line, false);
        assert!(!escaped.contains('\u{202e}'));
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["name"], "a\u{202e}b\u{e0001}c");
    }

    #[test]
    fn the_writer_escapes_whole_events() {
        let mut out = Vec::new();
        EscapingWriter::new(&mut out, false)
            .write_all(b"one\ntwo\n")
            .unwrap();
        assert_eq!(out, b"one\\ntwo\n");
    }
}
