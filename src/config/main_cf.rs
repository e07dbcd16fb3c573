//! main.cf's grammar: `name = value` logical lines, continuations, comments.
//!
//! A logical line starts with non-whitespace; a line that starts with whitespace continues it;
//! empty lines and lines whose first non-whitespace character is `#` are ignored even inside a
//! continuation (so a commented-out list item vanishes, as in Postfix). Continuations are
//! joined with one space. The last setting of a name wins.

use indexmap::IndexMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MainCfError {
    #[error("{file}, line {line}: missing '=' after attribute name: \"{text}\"")]
    MissingEquals {
        file: String,
        line: usize,
        text: String,
    },
    #[error("{file}, line {line}: bad parameter name \"{name}\"")]
    BadName {
        file: String,
        line: usize,
        name: String,
    },
    #[error("open {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

/// One `name = value` setting and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub line: usize,
    /// Earlier lines that set the same name (later settings override them).
    pub overridden_lines: Vec<usize>,
}

/// The parsed main.cf, in file order of first appearance.
#[derive(Debug, Clone, Default)]
pub struct MainCf {
    pub path: PathBuf,
    pub settings: IndexMap<String, Setting>,
}

impl MainCf {
    pub fn read(path: &Path) -> Result<MainCf, MainCfError> {
        let text = std::fs::read_to_string(path).map_err(|source| MainCfError::Io {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<MainCf, MainCfError> {
        let file = path.display().to_string();
        let mut settings: IndexMap<String, Setting> = IndexMap::new();
        for (line, logical) in logical_lines(text) {
            let Some(eq) = logical.find('=') else {
                return Err(MainCfError::MissingEquals {
                    file,
                    line,
                    text: logical,
                });
            };
            let name = logical[..eq].trim().to_string();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(MainCfError::BadName { file, line, name });
            }
            let value = logical[eq + 1..].trim().to_string();
            match settings.get_mut(&name) {
                Some(s) => {
                    s.overridden_lines.push(s.line);
                    s.value = value;
                    s.line = line;
                }
                None => {
                    settings.insert(
                        name,
                        Setting {
                            value,
                            line,
                            overridden_lines: Vec::new(),
                        },
                    );
                }
            }
        }
        Ok(MainCf {
            path: path.to_path_buf(),
            settings,
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.settings.get(name).map(|s| s.value.as_str())
    }
}

/// Splits text into (first line number, joined logical line) pairs.
pub fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if raw.starts_with(char::is_whitespace) {
            if let Some((_, cur)) = out.last_mut() {
                if !cur.is_empty() {
                    cur.push(' ');
                }
                cur.push_str(trimmed);
                continue;
            }
            // A continuation with nothing to continue: Postfix treats it as a line of its own.
        }
        out.push((idx + 1, raw.trim_end().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_and_comments() {
        let text = "a = 1\nlist =\n    x,\n    # gone\n    y,\n# c\nb=2 \nb = 3\n";
        let m = MainCf::parse(text, Path::new("main.cf")).unwrap();
        assert_eq!(m.get("a"), Some("1"));
        assert_eq!(m.get("list"), Some("x, y,"));
        assert_eq!(m.get("b"), Some("3"));
        assert_eq!(m.settings["b"].line, 8);
        assert_eq!(m.settings["b"].overridden_lines, vec![7]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = MainCf::parse("a = 1\nnonsense\n", Path::new("/x/main.cf")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/x/main.cf, line 2: missing '=' after attribute name: \"nonsense\""
        );
    }
}
