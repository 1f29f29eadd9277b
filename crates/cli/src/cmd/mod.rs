//! One module per subcommand.

pub(crate) mod diff;
pub(crate) mod oracle;
pub(crate) mod replay;
pub(crate) mod stress;
pub(crate) mod trace;

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// The whole input file, or stdin for `-`.
pub(crate) fn read_input(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Parses a script file, naming the file in errors (which name the line).
pub(crate) fn load_script(path: &Path) -> anyhow::Result<Vec<mmun_script::Step>> {
    let text = read_input(path)?;
    mmun_script::parse_script(&text).with_context(|| format!("{}", path.display()))
}
