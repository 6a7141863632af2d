//! JSON lines: one event per line in the canonical proto3 JSON mapping.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use phiguard_proto::v1;

use super::{parts::PartCache, Sink};

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

impl JsonLines<std::fs::File> {
    /// Appends to the file at `path`, created readable by its owner only (events describe
    /// who touched patient data).
    pub fn append_to(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(JsonLines::new(file))
    }
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn write(&mut self, event: &v1::Event) -> io::Result<()> {
        self.parts.write(&mut self.out, event)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
