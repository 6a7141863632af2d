//! `file:line:column` of a configuration error, from the byte span a parser reports.

use std::{fmt, ops::Range, path::Path, path::PathBuf};

/// Where a configuration error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file (or a stand-in such as `command line`).
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
}

impl Location {
    /// The whole of `file`, with no line or column.
    pub fn file(file: &Path) -> Location {
        Location {
            file: file.to_owned(),
            line: 0,
            column: 0,
        }
    }

    /// The line and column where the byte range `span` of `text` (the contents of `file`)
    /// starts. No span, or the empty span at 0 some parsers give for "somewhere", is the
    /// whole file.
    pub fn in_text(file: &Path, text: &str, span: Option<Range<usize>>) -> Location {
        let Some(span) = span.filter(|s| !(s.start == 0 && s.end == 0)) else {
            return Location::file(file);
        };
        let before = text.get(..span.start.min(text.len())).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: file.to_owned(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_from_one_in_characters() {
        let text = "a = 1\n# é\nbé = 2\n";
        let at = Location::in_text(Path::new("x.toml"), text, Some(14..15));
        assert_eq!((at.line, at.column), (3, 3));
        assert_eq!(at.to_string(), "x.toml:3:3");
    }

    #[test]
    fn no_span_or_the_empty_span_at_zero_is_the_whole_file() {
        let file = Path::new("x.toml");
        assert_eq!(Location::in_text(file, "a", None).to_string(), "x.toml");
        assert_eq!(
            Location::in_text(file, "a", Some(0..0)).to_string(),
            "x.toml"
        );
        assert_eq!(
            Location::in_text(file, "a", Some(0..1)).to_string(),
            "x.toml:1:1"
        );
    }

    #[test]
    fn a_span_past_the_end_or_inside_a_character_does_not_panic() {
        let file = Path::new("x.toml");
        assert_eq!(Location::in_text(file, "ab\n", Some(99..100)).line, 2);
        assert_eq!(Location::in_text(file, "é", Some(1..2)).line, 1);
    }
}
