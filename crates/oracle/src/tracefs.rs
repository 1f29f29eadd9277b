//! tracefs: checking it is usable, and a session that sets it up for one
//! run and puts every setting back however the run ends.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use rustix::fs::{Access, access, statfs};

use crate::error::{OracleError, Unavailable};

/// Where tracefs must be mounted.
pub(crate) const TRACEFS: &str = "/sys/kernel/tracing";
/// `TRACEFS_MAGIC` from `include/uapi/linux/magic.h`.
const TRACEFS_MAGIC: u64 = 0x7472_6163;
/// The KVM MMU-notifier events, as `events/` subdirectories.
pub(crate) const EVENTS: [&str; 3] = [
    "kvm/kvm_unmap_hva_range",
    "kvm/kvm_age_hva",
    "kvm/kvm_test_age_hva",
];
/// Control files a run writes.
const CONTROL: [&str; 6] = [
    "trace",
    "trace_marker",
    "set_event_pid",
    "options/event-fork",
    "options/markers",
    "tracing_on",
];

fn path(file: &str) -> String {
    format!("{TRACEFS}/{file}")
}

fn is_mounted() -> bool {
    statfs(TRACEFS).is_ok_and(|st| st.f_type as u64 == TRACEFS_MAGIC)
}

/// Checks tracefs; mounts it first if `mount` and it is not mounted.
pub(crate) fn check(mount: bool) -> Result<(), Unavailable> {
    if !is_mounted() {
        if !mount {
            return Err(Unavailable::TracefsNotMounted);
        }
        // `mount -t tracefs nodev /sys/kernel/tracing`
        rustix::mount::mount(
            "nodev",
            TRACEFS,
            "tracefs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .map_err(|e| Unavailable::TracefsMount(e.into()))?;
        if !is_mounted() {
            return Err(Unavailable::TracefsNotMounted);
        }
    }
    for event in EVENTS {
        if !Path::new(&path(&format!("events/{event}/enable"))).exists() {
            return Err(Unavailable::NoEvent(event));
        }
    }
    let events = EVENTS.iter().map(|e| format!("events/{e}/enable"));
    for file in CONTROL.iter().map(|f| f.to_string()).chain(events) {
        let path = path(&file);
        access(path.as_str(), Access::WRITE_OK).map_err(|e| Unavailable::TracefsFile {
            path,
            source: e.into(),
        })?;
    }
    Ok(())
}

fn tracefs_error(file: &str, source: io::Error) -> OracleError {
    OracleError::Tracefs {
        path: path(file),
        source,
    }
}

/// Writes `value` to a tracefs file, opened with `O_TRUNC` as the kernel
/// expects (for `trace` that clears the buffer, for `set_event_pid` the
/// list).
fn write(file: &str, value: &str) -> Result<(), OracleError> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path(file))
        .map_err(|e| tracefs_error(file, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| tracefs_error(file, e))
}

fn read(file: &str) -> Result<String, OracleError> {
    std::fs::read_to_string(path(file)).map_err(|e| tracefs_error(file, e))
}

/// The text of the `trace` file.
pub(crate) fn read_trace() -> Result<String, OracleError> {
    read("trace")
}

/// A run's hold on tracefs: events enabled for one task, markers open. Every
/// setting it changed goes back on [`Session::finish`] or on drop (error
/// returns and panics included).
#[derive(Debug)]
pub(crate) struct Session {
    /// Files changed, with the value to restore, in the order changed.
    saved: Vec<(String, String)>,
    marker: Option<File>,
}

impl Session {
    /// Clears the buffer and enables the three events for task `tid` only.
    pub(crate) fn start(tid: i32) -> Result<Session, OracleError> {
        let mut session = Session {
            saved: Vec::new(),
            marker: None,
        };
        session.set("tracing_on", "1")?;
        session.set("options/markers", "1")?;
        // A forked child's events are not the script's (and its mm has no
        // notifier anyway).
        session.set("options/event-fork", "0")?;
        session.set("set_event_pid", &tid.to_string())?;
        write("trace", "")?;
        let marker = OpenOptions::new().write(true).open(path("trace_marker"));
        session.marker = Some(marker.map_err(|e| tracefs_error("trace_marker", e))?);
        for event in EVENTS {
            session.set(&format!("events/{event}/enable"), "1")?;
        }
        Ok(session)
    }

    /// Records the current value of `file`, then writes `value`.
    fn set(&mut self, file: &str, value: &str) -> Result<(), OracleError> {
        let old = read(file)?;
        let old = if file == "set_event_pid" {
            old.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            // Event `enable` files may read `0*` or `1*` (soft-disabled);
            // the digit is the state.
            old.trim().chars().take(1).collect()
        };
        self.saved.push((file.to_string(), old));
        write(file, value)
    }

    /// Writes a marker into the trace, in one write.
    pub(crate) fn mark(&mut self, text: &str) -> Result<(), OracleError> {
        let marker = self
            .marker
            .as_mut()
            .expect("marker is open while the session runs");
        match marker.write(text.as_bytes()) {
            Ok(n) if n == text.len() => Ok(()),
            Ok(n) => Err(tracefs_error(
                "trace_marker",
                io::Error::other(format!("short write: {n} of {} bytes", text.len())),
            )),
            Err(e) => Err(tracefs_error("trace_marker", e)),
        }
    }

    /// Puts every setting back, events first; the first failure, if any.
    pub(crate) fn finish(mut self) -> Result<(), OracleError> {
        self.restore()
    }

    fn restore(&mut self) -> Result<(), OracleError> {
        self.marker = None;
        let mut first_error = Ok(());
        while let Some((file, value)) = self.saved.pop() {
            if let Err(e) = write(&file, &value)
                && first_error.is_ok()
            {
                first_error = Err(e);
            }
        }
        first_error
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}
