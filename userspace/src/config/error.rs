//! Configuration problems: where each one is (file, line, column, field path, check id),
//! what is wrong and what is expected, and the collector that gathers all of them
//! before a file is refused.

use std::{collections::HashSet, fmt, io, ops::Range, path::PathBuf, sync::Arc};

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    /// File path (or `<json>` for a check given as JSON) the problem is in.
    pub origin: String,
    /// 1-based line, when the source has positions (TOML does, JSON values do not).
    pub line: Option<usize>,
    /// 1-based column in characters, with `line`.
    pub column: Option<usize>,
    /// Id of the check concerned, when it is known.
    pub check: Option<String>,
    /// Field path, e.g. `check[2].http.expect_status[0]` (empty for a syntax error).
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let (Some(line), Some(col)) = (self.line, self.column) {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if let Some(id) = &self.check {
            write!(f, "check {id:?}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration was refused. Nothing of a refused configuration is applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file was read but is not a valid configuration: every problem found, one per
    /// line when displayed, in file order.
    #[error("{}", join(problems))]
    Invalid {
        /// All problems found (never empty).
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems of an invalid configuration (empty for a read error).
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems } => problems,
        }
    }
}

fn join(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// A position in a source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub origin: Arc<str>,
    pub line: usize,
    pub col: usize,
}

/// Where a value came from: its field path and, for TOML, its position. Values keep it
/// so that problems found later (cross-field rules, defaults applied to a JSON check)
/// still point at the right line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct At {
    pub path: String,
    pub pos: Option<Pos>,
}

impl At {
    /// Path of a field of this table.
    /// Keys that are not bare TOML keys are quoted (`headers."X-A\r"`).
    pub fn child(&self, name: &str) -> String {
        let bare = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let name = if bare {
            name.to_owned()
        } else {
            format!("{name:?}")
        };
        if self.path.is_empty() {
            name
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Whether the value came from the `[defaults]` table.
    pub fn in_defaults(&self) -> bool {
        self.path == "defaults" || self.path.starts_with("defaults.")
    }

    /// `file:line:col` (or the path when there is no position), for messages that point
    /// at a second place.
    pub fn describe(&self) -> String {
        match &self.pos {
            Some(p) => format!("{}:{}:{}", p.origin, p.line, p.col),
            None => self.path.clone(),
        }
    }
}

/// A value with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Val<T> {
    pub v: T,
    pub at: At,
}

/// Byte offsets of line starts, to turn spans into line and column.
#[derive(Debug)]
struct LineIndex {
    text: Arc<str>,
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            text: Arc::from(text),
            starts,
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }
}

/// Collects problems while a configuration is walked.
#[derive(Debug)]
pub(crate) struct Ctx {
    origin: Arc<str>,
    index: Option<LineIndex>,
    problems: Vec<Problem>,
    /// The problems already recorded (a default's problem is found once per check).
    seen: HashSet<Problem>,
    /// Id of the check being walked, once known.
    pub check: Option<String>,
}

impl Ctx {
    /// A collector for `origin`; `text` (the source) gives positions to spans.
    pub fn new(origin: &str, text: Option<&str>) -> Self {
        Self {
            origin: Arc::from(origin),
            index: text.map(LineIndex::new),
            problems: Vec::new(),
            seen: HashSet::new(),
            check: None,
        }
    }

    /// Where a value at `span` with field path `path` is.
    pub fn at(&self, path: String, span: Option<&Range<usize>>) -> At {
        let pos = match (&self.index, span) {
            (Some(index), Some(span)) => {
                let (line, col) = index.line_col(span.start);
                Some(Pos {
                    origin: self.origin.clone(),
                    line,
                    col,
                })
            }
            _ => None,
        };
        At { path, pos }
    }

    /// Record a problem with the value at `at`. Values from `[defaults]` are not blamed
    /// on the check being walked (they would be reported once per check otherwise).
    pub fn report(&mut self, at: &At, message: impl Into<String>) {
        let check = if at.in_defaults() {
            None
        } else {
            self.check.clone()
        };
        let (origin, line, column) = match &at.pos {
            Some(p) => (p.origin.to_string(), Some(p.line), Some(p.col)),
            None => (self.origin.to_string(), None, None),
        };
        let problem = Problem {
            origin,
            line,
            column,
            check,
            field: at.path.clone(),
            message: message.into(),
        };
        if self.seen.insert(problem.clone()) {
            self.problems.push(problem);
        }
    }

    /// Record a TOML syntax error at byte span `span`.
    pub fn syntax(&mut self, span: Option<Range<usize>>, message: &str) {
        let at = self.at(String::new(), span.as_ref());
        let message = format!("TOML syntax: {}", message.trim_end().replace('\n', "; "));
        self.report(&at, message);
    }

    /// `Ok(value)` when nothing went wrong, else every problem in file order.
    pub fn finish<T>(mut self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            return Ok(value);
        }
        self.problems.sort_by(|a, b| {
            (a.line.is_none(), a.line, a.column).cmp(&(b.line.is_none(), b.line, b.column))
        });
        Err(ConfigError::Invalid {
            problems: self.problems,
        })
    }
}
