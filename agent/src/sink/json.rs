//! JSON lines: one event per line in the canonical proto3 JSON mapping.

use std::{
    io::{self, BufWriter, Write},
    path::Path,
};

use phiguard_proto::v1;

use super::{
    parts::PartCache,
    rotating::{RotatingFile, Rotation},
    Sink,
};

/// Writes events as JSON lines to any writer.
pub struct JsonLines<W: Write + Send> {
    out: BufWriter<W>,
    /// The JSON of each process's host, process and ancestry parts, written last.
    parts: PartCache,
}

impl<W: Write + Send> JsonLines<W> {
    /// Wraps `out`.
    pub fn new(out: W) -> Self {
        JsonLines {
            out: BufWriter::with_capacity(64 * 1024, out),
            parts: PartCache::default(),
        }
    }
}

impl JsonLines<RotatingFile> {
    /// Appends to the file at `path` (created readable by its owner only: events describe
    /// who touched patient data), rotated as `rotation` says.
    pub fn append_to(path: &Path, rotation: Rotation) -> io::Result<Self> {
        Ok(JsonLines::new(RotatingFile::open(path, rotation)?))
    }
}

/// A writer that can open its destination again (a file after an external rotation).
pub trait Reopen {
    /// Opens the destination again; a no-op where there is nothing to reopen.
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Reopen for RotatingFile {
    fn reopen(&mut self) -> io::Result<()> {
        RotatingFile::reopen(self)
    }
}

impl Reopen for io::Stdout {}
impl Reopen for io::Sink {}
impl Reopen for Vec<u8> {}

impl<W: Write + Send + Reopen> Sink for JsonLines<W> {
    fn write(&mut self, event: &v1::Event) -> io::Result<()> {
        self.parts.write(&mut self.out, event)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_mut().reopen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_event_in_proto_json() {
        let mut sink = JsonLines::new(Vec::new());
        let event = v1::Event {
            id: "x".into(),
            seq: 7,
            ..Default::default()
        };
        sink.write(&event).unwrap();
        sink.write(&event).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(sink.out.into_inner().unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let parsed: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        // proto3 JSON: uint64 as a string.
        assert_eq!(parsed["seq"], "7");
    }
}
