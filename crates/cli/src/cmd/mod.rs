//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod diff;
pub(crate) mod oracle;
pub(crate) mod replay;
pub(crate) mod stress;
pub(crate) mod trace;

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// The whole input file, or stdin for `-`, as text; binary input is an
/// error naming the file and the line where it stops being text.
pub(crate) fn read_input(path: &Path) -> anyhow::Result<String> {
    let bytes = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
        bytes
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    let text = mmun_script::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(text.to_owned())
}

/// The software MMU's RAM and VMA limit, for the subcommands that replay.
#[derive(Debug, clap::Args)]
pub(crate) struct MachineArgs {
    /// `vm.max_map_count` of the software MMU (the oracle process's own 36
    /// mappings count against it, as on Linux).
    #[arg(long, value_name = "N", default_value_t = mmun_softmmu::DEFAULT_MAX_MAP_COUNT)]
    pub(crate) max_map_count: usize,
    #[command(flatten)]
    pub(crate) memory: MemoryArg,
}

/// The software MMU's RAM.
#[derive(Debug, clap::Args)]
pub(crate) struct MemoryArg {
    /// RAM of the software MMU in MiB: a touch that finds none free is an
    /// OOM kill, populate and mlock fail as on Linux.
    #[arg(long = "memory-mib", value_name = "MIB", default_value_t = mmun_softmmu::DEFAULT_MEMORY_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    mib: u64,
}

impl MemoryArg {
    pub(crate) fn bytes(&self) -> u64 {
        self.mib << 20
    }
}

/// Parses a script file, naming the file in errors (which name the line).
pub(crate) fn load_script(path: &Path) -> anyhow::Result<Vec<mmun_script::Step>> {
    let text = read_input(path)?;
    mmun_script::parse_script(&text).with_context(|| format!("{}", path.display()))
}
