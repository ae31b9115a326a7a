//! The exported log's file formats. Format 2 (`audit export --format log` writes it) has one
//! JSON object a line: a header naming the format, the epoch and how many entries and seals
//! follow, then `{"entry": …}` lines in order, `{"seal": …}` lines, and an `{"end": …}` line
//! with the counts again. A file that was cut or altered so that it no longer parses is
//! damaged at a line, which names the entry or seal it held and its byte offset; a cut at a
//! line's end is found by the missing end line, altered counts by the other line's.
//! Format 1 (one pretty-printed JSON object) is still read; its damage is located by byte
//! offset alone.

use super::{ExportedLog, ExportedSeal, LOG_FORMAT};
use crate::royalty::ChainedEntry;
use serde::{Deserialize, Serialize};

/// The format of exports written one entry a line.
pub const LOG_FORMAT_LINES: &str = "vouchsafe-royalty-log/2";

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    epoch: u64,
    entries: u64,
    seals: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Entry(ChainedEntry),
    Seal(ExportedSeal),
    /// The last line: what the file holds, so that a cut at a line's end shows.
    End(Counts),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    entries: u64,
    seals: u64,
}

/// Where a file stops parsing: what it held up to there (entries and seals read), and the
/// position of the damage.
#[derive(Debug)]
pub struct Damage {
    /// The log as far as it parsed.
    pub partial: ExportedLog,
    /// The entry (or seal) the damaged line held, or the first one missing after a cut.
    pub entry: Option<u64>,
    pub seal: Option<u64>,
    /// Byte offset of the damaged line's start (format 2) or of the parse error (format 1).
    pub byte_offset: u64,
    pub reason: String,
}

/// The export's bytes in format 2.
pub fn write_lines(log: &ExportedLog) -> Vec<u8> {
    let header = Header { format: LOG_FORMAT_LINES.into(), epoch: log.epoch, entries: log.entries.len() as u64, seals: log.seals.len() as u64 };
    let mut bytes = serde_json::to_vec(&header).expect("a header of strings and integers serializes");
    bytes.push(b'\n');
    for entry in &log.entries {
        serde_json::to_writer(&mut bytes, &Line::Entry(entry.clone())).expect("an entry serializes");
        bytes.push(b'\n');
    }
    for seal in &log.seals {
        serde_json::to_writer(&mut bytes, &Line::Seal(seal.clone())).expect("a seal serializes");
        bytes.push(b'\n');
    }
    serde_json::to_writer(&mut bytes, &Line::End(Counts { entries: header.entries, seals: header.seals })).expect("counts serialize");
    bytes.push(b'\n');
    bytes
}

/// Reads an exported log in either format; `Err` names where the damage starts.
pub fn read_log(bytes: &[u8]) -> Result<ExportedLog, Box<Damage>> {
    let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    match serde_json::from_slice::<Header>(first_line) {
        Ok(_) if first_line.len() == bytes.len() => Err(Box::new(Damage {
            partial: ExportedLog { format: LOG_FORMAT.into(), epoch: crate::royalty_log::EPOCH, entries: Vec::new(), seals: Vec::new() },
            entry: Some(0),
            seal: None,
            byte_offset: 0,
            reason: "the file is cut inside its header line".into(),
        })),
        Ok(header) if header.format == LOG_FORMAT_LINES => read_lines(bytes, header, first_line.len() as u64 + 1),
        // Format 1 is pretty-printed: its first line is the object's opening brace.
        _ if first_line == b"{" && bytes.len() > 2 => read_whole(bytes),
        _ => {
            let partial = ExportedLog { format: LOG_FORMAT_LINES.into(), epoch: crate::royalty_log::EPOCH, entries: Vec::new(), seals: Vec::new() };
            Err(Box::new(Damage { partial, entry: Some(0), seal: None, byte_offset: 0, reason: "the first line is not an exported log's header".into() }))
        }
    }
}

/// Format 1: one JSON object.
fn read_whole(bytes: &[u8]) -> Result<ExportedLog, Box<Damage>> {
    serde_json::from_slice::<ExportedLog>(bytes).map_err(|error| {
        let byte_offset = offset_of(bytes, error.line(), error.column());
        let partial = ExportedLog { format: LOG_FORMAT.into(), epoch: crate::royalty_log::EPOCH, entries: Vec::new(), seals: Vec::new() };
        Box::new(Damage { partial, entry: None, seal: None, byte_offset, reason: format!("the file does not parse from byte {byte_offset} on: {error}") })
    })
}

/// The byte offset of serde_json's (1-based line, 1-based column).
fn offset_of(bytes: &[u8], line: usize, column: usize) -> u64 {
    let start: usize = bytes.split(|&b| b == b'\n').take(line.saturating_sub(1)).map(|line| line.len() + 1).sum();
    (start + column.saturating_sub(1)).min(bytes.len()) as u64
}

fn read_lines(bytes: &[u8], header: Header, mut offset: u64) -> Result<ExportedLog, Box<Damage>> {
    // In memory every export is the same `ExportedLog`, whichever file format it came from.
    let mut log = ExportedLog { format: LOG_FORMAT.into(), epoch: header.epoch, entries: Vec::new(), seals: Vec::new() };
    // The entry or seal a damaged line held, or the first one missing: named by the header's
    // counts (the offset is right even when those were altered).
    let damaged = |log: ExportedLog, byte_offset: u64, reason: String| {
        let (entry, seal) = if (log.entries.len() as u64) < header.entries && log.seals.is_empty() {
            (Some(log.entries.len() as u64), None)
        } else {
            (None, Some(log.seals.len() as u64))
        };
        Box::new(Damage { partial: log, entry, seal, byte_offset, reason })
    };
    let body = &bytes[usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len())..];
    let mut lines = body.split(|&b| b == b'\n').peekable();
    let mut end = None;
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        if last && line.is_empty() {
            break;
        }
        if last {
            // Every line ends in a newline: this one was cut (even if what is left parses).
            return Err(damaged(log, offset, format!("the file is cut at byte {}, inside the line at byte {offset}", offset + line.len() as u64)));
        }
        if log.entries.len() + log.seals.len() >= super::LOG_ITEMS_MAX * 2 {
            return Err(damaged(log, offset, "more lines than a log may hold".into()));
        }
        // Entries, then seals, then the end line; nothing after it.
        match serde_json::from_slice::<Line>(line) {
            Ok(Line::Entry(entry)) if log.seals.is_empty() && end.is_none() => log.entries.push(entry),
            Ok(Line::Seal(seal)) if end.is_none() => log.seals.push(seal),
            Ok(Line::End(counts)) if end.is_none() => end = Some((offset, counts)),
            Ok(_) => return Err(damaged(log, offset, format!("the line at byte {offset} is out of place (entries, then seals, then the end line)"))),
            Err(error) => return Err(damaged(log, offset, format!("the line at byte {offset} does not parse: {error}"))),
        }
        offset += line.len() as u64 + 1;
    }
    let held = Counts { entries: log.entries.len() as u64, seals: log.seals.len() as u64 };
    let Some((end_offset, counts)) = end else {
        let reason = format!("the file ends at byte {offset} after {} entries and {} seals, without its end line (cut short)", held.entries, held.seals);
        return Err(damaged(log, offset, reason));
    };
    if counts != held {
        let reason = format!("the end line counts {} entries and {} seals, the file holds {} and {}", counts.entries, counts.seals, held.entries, held.seals);
        return Err(damaged(log, end_offset, reason));
    }
    if (header.entries, header.seals) != (held.entries, held.seals) {
        let reason = format!("the header counts {} entries and {} seals, the file holds {} and {}", header.entries, header.seals, held.entries, held.seals);
        return Err(Box::new(Damage { partial: log, entry: None, seal: None, byte_offset: 0, reason }));
    }
    Ok(log)
}
