//! config validate
use std::path::Path;

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: std::path::PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found in a config, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(
                f,
                "{}:{}:{}: {}",
                e.file.display(),
                e.line,
                e.column,
                e.message
            )?;
        }
        Ok(())
    }
}
impl std::error::Error for ConfigErrors {}

pub fn load(path: &Path) -> Result<super::Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.into(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    load_str(path, &text)
}

pub fn load_str(path: &Path, text: &str) -> Result<super::Config, ConfigErrors> {
    let _ = text;
    Err(ConfigErrors(vec![ConfigError {
        file: path.into(),
        line: 1,
        column: 1,
        message: "not implemented".into(),
    }]))
}
