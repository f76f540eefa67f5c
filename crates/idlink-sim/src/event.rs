//! The compact in-memory event and its JSON-lines writer. A day's events
//! are held as small fixed-size records referring to ids by index, and are
//! only turned into text when written.

use std::io::{self, Write};

use crate::agents;
use crate::ids::push_event_id;
use crate::net::Ip;
use crate::rng::mix;
use crate::timefmt::push_rfc3339_ms;

/// Marker for "no device" / "no account" in the index fields.
pub(crate) const NONE: u32 = u32::MAX;

/// Event kind, written as the `kind` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Sign-in on a device.
    Login,
    /// Sign-out on a device.
    Logout,
    /// A page view (web or in-app).
    PageView,
    /// A widget render.
    WidgetView,
    /// App start (first event of an app session).
    AppOpen,
    /// An ad impression reported by the ads pipeline.
    AdImpression,
    /// Privacy: the account opts out of inferred linking.
    OptOut,
    /// Privacy: the account opts back in.
    OptIn,
    /// Privacy: erase an account or a device id.
    Erase,
}

impl Kind {
    fn text(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Logout => "logout",
            Kind::PageView => "page_view",
            Kind::WidgetView => "widget_view",
            Kind::AppOpen => "app_open",
            Kind::AdImpression => "ad_impression",
            Kind::OptOut => "opt_out",
            Kind::OptIn => "opt_in",
            Kind::Erase => "erase",
        }
    }

    /// True for privacy requests, which carry no address or source.
    pub(crate) fn is_privacy(self) -> bool {
        matches!(self, Kind::OptOut | Kind::OptIn | Kind::Erase)
    }
}

/// Where the event was collected, written as `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// First-party website.
    Web,
    /// First-party app.
    App,
    /// A partner integration reporting the same devices.
    Partner,
    /// The ads pipeline.
    Ads,
}

impl Source {
    fn text(self) -> &'static str {
        match self {
            Source::Web => "web",
            Source::App => "app",
            Source::Partner => "partner",
            Source::Ads => "ads",
        }
    }
}

/// One event held in memory until its day is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ev {
    /// Write-order key: jittered position time in the high bits, a
    /// sequence number in the low bits so keys are unique and sorting is
    /// deterministic.
    pub key: u64,
    /// Event time, ms since scenario start.
    pub ts: u64,
    /// Client address (ignored for privacy requests).
    pub ip: Ip,
    /// Device id index, or [`NONE`].
    pub id: u32,
    /// Account index, or [`NONE`].
    pub acct: u32,
    /// Event kind.
    pub kind: Kind,
    /// Collection source.
    pub src: Source,
    /// User-agent index.
    pub ua: u8,
}

/// Width of one slot in a [`TextTable`]: a length byte and up to 39 bytes.
const SLOT: usize = 40;

/// Id texts packed into fixed-width slots of one allocation. Events are
/// written in time order, which visits ids in random order; one cache miss
/// per lookup instead of two (record, then heap string) is a noticeable
/// share of the writing time at millions of ids.
pub(crate) struct TextTable {
    /// Slots of [`SLOT`] bytes: length, then text, then padding.
    bytes: Vec<u8>,
}

impl TextTable {
    /// Packs `texts`; a text longer than a slot is cut (ids generated here
    /// are at most 36 bytes, so this never happens).
    pub(crate) fn new<'a>(texts: impl Iterator<Item = &'a str>) -> Self {
        let mut bytes = Vec::new();
        for t in texts {
            let t = t.as_bytes();
            let n = t.len().min(SLOT - 1);
            bytes.push(n as u8);
            bytes.extend_from_slice(t.get(..n).unwrap_or(&[]));
            bytes.resize(bytes.len() + (SLOT - 1 - n), 0);
        }
        TextTable { bytes }
    }

    /// The text at index `i`, if any.
    pub(crate) fn get(&self, i: u32) -> Option<&[u8]> {
        let at = (i as usize).checked_mul(SLOT)?;
        let slot = self.bytes.get(at..at + SLOT)?;
        let n = usize::from(*slot.first()?);
        slot.get(1..1 + n)
    }
}

/// Size at which the writer hands its buffer to the output.
const FLUSH_AT: usize = 4 << 20;

/// Writes events as JSON lines and counts them. Lines are formatted
/// straight into one large buffer (no per-line copy), which matters at
/// tens of millions of lines.
pub(crate) struct EventWriter<W: Write> {
    /// Destination (the events file).
    out: W,
    /// Pending output, handed to `out` in large writes.
    line: Vec<u8>,
    /// Scratch for address text.
    ip: String,
    /// Scenario start, Unix ms: event times are offsets from it.
    start_ms: i64,
    /// Scenario salt, so event ids differ between seeds.
    salt: u64,
    /// Lines written so far (also the event-id counter).
    pub written: u64,
}

impl<W: Write> EventWriter<W> {
    /// A writer for a scenario starting at `start_ms` (Unix ms).
    pub(crate) fn new(out: W, start_ms: i64, salt: u64) -> Self {
        EventWriter {
            out,
            line: Vec::with_capacity(FLUSH_AT + 4096),
            ip: String::with_capacity(40),
            start_ms,
            salt,
            written: 0,
        }
    }

    /// Writes one event. Ids and user agents are generated by this crate
    /// and contain no characters that need JSON escaping.
    pub(crate) fn write(
        &mut self,
        ev: &Ev,
        ids: &TextTable,
        accounts: &TextTable,
    ) -> io::Result<()> {
        let l = &mut self.line;
        l.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339_ms(l, self.start_ms + ev.ts as i64);
        l.extend_from_slice(b"\",\"kind\":\"");
        l.extend_from_slice(ev.kind.text().as_bytes());
        l.push(b'"');
        if let Some(text) = ids.get(ev.id) {
            l.extend_from_slice(b",\"device_id\":\"");
            l.extend_from_slice(text);
            l.push(b'"');
        }
        if !ev.kind.is_privacy() {
            self.ip.clear();
            ev.ip.push_text(&mut self.ip);
            l.extend_from_slice(b",\"ip\":\"");
            l.extend_from_slice(self.ip.as_bytes());
            l.push(b'"');
        }
        if let Some(text) = accounts.get(ev.acct) {
            l.extend_from_slice(b",\"account_id\":\"");
            l.extend_from_slice(text);
            l.push(b'"');
        }
        let n = self.written;
        // Most events carry an event id; some pipelines do not send one.
        if mix(n ^ self.salt ^ 0xe1d) % 100 < 88 {
            l.extend_from_slice(b",\"event_id\":\"");
            push_event_id(l, n, self.salt);
            l.push(b'"');
        }
        if !ev.kind.is_privacy() {
            l.extend_from_slice(b",\"source\":\"");
            l.extend_from_slice(ev.src.text().as_bytes());
            l.extend_from_slice(b"\",\"user_agent\":\"");
            l.extend_from_slice(agents::text(ev.ua).as_bytes());
            l.push(b'"');
        }
        l.extend_from_slice(b"}\n");
        if l.len() >= FLUSH_AT {
            self.out.write_all(l)?;
            l.clear();
        }
        self.written += 1;
        Ok(())
    }

    /// Flushes and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&self.line)?;
        self.line.clear();
        self.out.flush()?;
        Ok(self.out)
    }
}
