//! Configuration problems and where they are: every error carries its path in the document
//! (`subscriptions[2].delivery.backoffDelay: invalid ISO-8601 duration "5 s"`).

use serde_yaml::Value;
use std::fmt;

/// One configuration problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// All the problems found in one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// `base` and `rest` as one path (`a.b`, `a[0]`).
pub fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (false, true) => base.to_owned(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        (false, false) => format!("{base}.{rest}"),
    }
}

/// Deserializes `v`, naming the path of the first problem below `base`.
pub fn typed<T: serde::de::DeserializeOwned>(v: Value, base: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(join(base, &path), e.into_inner().to_string())
    })
}

impl ConfigError {
    /// The same problem, seen from `base` (a component's errors placed in the document).
    pub fn under(self, base: &str) -> ConfigError {
        ConfigError {
            path: join(base, &self.path),
            message: self.message,
        }
    }
}
