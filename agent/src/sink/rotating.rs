//! The local event file, rotated by size and age without losing or splitting a line.
//!
//! `events.jsonl` is renamed to `events.jsonl.N` (N one more than the highest there: no clock
//! in the name, so a clock that jumps cannot reorder them) once it holds `max_bytes` or is
//! `max_age` old, and a new file is opened. The switch happens only between two lines: a
//! write that crosses the threshold finishes its line in the old file. The old file is
//! fsync'd before the rename. Only the newest `keep` rotated files stay (0: all). `reopen`
//! (SIGHUP, `systemctl reload`) opens the path again, for an external `logrotate` that
//! renamed the file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// When the event file is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file holds this many bytes (0: never by size).
    pub max_bytes: u64,
    /// Rotate once the file has been written this long (zero: never by age).
    pub max_age: Duration,
    /// Rotated files kept, the newest (0: all).
    pub keep: u32,
}

/// An append-only file that rotates itself between lines.
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    bytes: u64,
    opened: Instant,
    at_line_start: bool,
}

/// Opens `path` for appending, created readable by its owner only (events describe who
/// touched patient data).
fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let bytes = file.metadata()?.len();
    Ok((file, bytes))
}

/// The numbers N of the rotated files `name.N` in `dir`, ascending.
fn rotated_numbers(dir: &Path, name: &str) -> io::Result<Vec<u64>> {
    let prefix = format!("{name}.");
    let mut numbers: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| {
            let file = e.ok()?.file_name();
            file.to_str()?.strip_prefix(&prefix)?.parse::<u64>().ok()
        })
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

impl RotatingFile {
    /// Opens (appends to) the file at `path`.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<RotatingFile> {
        let (file, bytes) = open_append(path)?;
        Ok(RotatingFile {
            path: path.to_owned(),
            rotation,
            file,
            bytes,
            opened: Instant::now(),
            at_line_start: true,
        })
    }

    /// Opens the path again (after an external rotation renamed the file).
    pub fn reopen(&mut self) -> io::Result<()> {
        let (file, bytes) = open_append(&self.path)?;
        self.file = file;
        self.bytes = bytes;
        self.opened = Instant::now();
        Ok(())
    }

    fn due(&self) -> bool {
        let Rotation {
            max_bytes, max_age, ..
        } = self.rotation;
        self.bytes > 0
            && ((max_bytes > 0 && self.bytes >= max_bytes)
                || (!max_age.is_zero() && self.opened.elapsed() >= max_age))
    }

    /// Moves the full file aside as `path.N` and starts a new one; drops the oldest beyond
    /// `keep`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "event file has no name"))?
            .to_owned();
        let mut numbers = rotated_numbers(&dir, &name)?;
        let next = numbers.last().map_or(1, |n| n + 1);
        fs::rename(&self.path, dir.join(format!("{name}.{next}")))?;
        numbers.push(next);
        self.reopen()?;
        File::open(&dir)?.sync_all()?;
        let keep = self.rotation.keep as usize;
        if keep > 0 && numbers.len() > keep {
            for old in &numbers[..numbers.len() - keep] {
                fs::remove_file(dir.join(format!("{name}.{old}")))?;
            }
        }
        Ok(())
    }

    fn written(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        if let Some(last) = bytes.last() {
            self.at_line_start = *last == b'\n';
        }
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.due() && self.at_line_start {
            self.rotate()?;
        }
        // Write no further than the end of the line that is due to close this file: the
        // current line when the file is due already, else the line that reaches the size
        // limit. The caller's next write then starts the new file.
        let from = if self.due() {
            0
        } else if self.rotation.max_bytes > 0 {
            let room = self.rotation.max_bytes.saturating_sub(self.bytes);
            usize::try_from(room)
                .unwrap_or(usize::MAX)
                .saturating_sub(1)
        } else {
            usize::MAX
        };
        let end = buf
            .get(from..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
            .map_or(buf.len(), |i| from + i + 1);
        let n = self.file.write(&buf[..end])?;
        self.written(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_lines(dir: &Path) -> Vec<String> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        // Rotated files in order, then the live one.
        files.sort_by_key(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        files
            .iter()
            .flat_map(|p| {
                let text = fs::read_to_string(p).unwrap();
                assert!(
                    text.is_empty() || text.ends_with('\n'),
                    "{} ends mid-line",
                    p.display()
                );
                text.lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rotation_by_size_keeps_every_line_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation {
            max_bytes: 1000,
            max_age: Duration::ZERO,
            keep: 0,
        };
        // Through a BufWriter, whose chunks end mid-line, as the JSON sink writes.
        let mut out =
            io::BufWriter::with_capacity(777, RotatingFile::open(&path, rotation).unwrap());
        let written: Vec<String> = (0..2000)
            .map(|i| format!("{{\"seq\":\"{i}\",\"pad\":\"{}\"}}", "x".repeat(i % 97)))
            .collect();
        for line in &written {
            out.write_all(line.as_bytes()).unwrap();
            out.write_all(b"\n").unwrap();
        }
        out.flush().unwrap();
        assert_eq!(all_lines(dir.path()), written);
        let rotated = rotated_numbers(dir.path(), "events.jsonl").unwrap();
        assert!(rotated.len() > 50, "only {} rotations", rotated.len());
        assert_eq!(rotated, (1..=rotated.len() as u64).collect::<Vec<_>>());
        for n in rotated {
            let size = fs::metadata(dir.path().join(format!("events.jsonl.{n}")))
                .unwrap()
                .len();
            // At least the limit, at most the limit plus one line.
            assert!(
                (1000..1000 + 200).contains(&size),
                "events.jsonl.{n}: {size} bytes"
            );
        }
    }

    #[test]
    fn rotation_by_age_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation {
            max_bytes: 0,
            max_age: Duration::from_millis(1),
            keep: 3,
        };
        let mut file = RotatingFile::open(&path, rotation).unwrap();
        for i in 0..6 {
            file.write_all(format!("line {i}\n").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Each line after the first found the file too old: 5 rotations, the newest 3 kept.
        assert_eq!(
            rotated_numbers(dir.path(), "events.jsonl").unwrap(),
            vec![3, 4, 5]
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "line 5\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("events.jsonl.3")).unwrap(),
            "line 2\n"
        );
    }

    #[test]
    fn an_agent_restarted_next_to_rotated_files_numbers_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        fs::write(dir.path().join("events.jsonl.7"), "old\n").unwrap();
        fs::write(&path, "a\n").unwrap();
        let rotation = Rotation {
            max_bytes: 2,
            max_age: Duration::ZERO,
            keep: 0,
        };
        let mut file = RotatingFile::open(&path, rotation).unwrap();
        file.write_all(b"b\n").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("events.jsonl.8")).unwrap(),
            "a\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
    }

    #[test]
    fn reopen_follows_an_external_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation {
            max_bytes: 0,
            max_age: Duration::ZERO,
            keep: 0,
        };
        let mut file = RotatingFile::open(&path, rotation).unwrap();
        file.write_all(b"before\n").unwrap();
        fs::rename(&path, dir.path().join("moved")).unwrap();
        file.write_all(b"still old\n").unwrap();
        file.reopen().unwrap();
        file.write_all(b"after\n").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("moved")).unwrap(),
            "before\nstill old\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "after\n");
    }
}
