//! Replaying a script, side by side in one run: `replay/simple_steps` is
//! `Replayer::step` over a parsed script of 10,000 `mmap` / `touch` /
//! `munmap` steps (throughput in steps/s), and `replay/parse` the parsing
//! of that script.
//!
//! `cargo bench -p mmun-replay --bench replay`

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use mmun_replay::Replayer;

/// Steps of the script.
const SCRIPT_STEPS: usize = 10_000;

/// `mmap OFF 0x1000 rw` / `touch OFF 0x1000 w` / `munmap OFF 0x1000` at
/// offsets cycling through 1024 slots 64 KiB apart; every triple leaves the
/// address space as it found it, so the script can be replayed repeatedly
/// on one `Replayer`.
fn simple_script() -> String {
    let mut text = String::new();
    for i in 0..SCRIPT_STEPS {
        let off = ((i / 3) % 1024) as u64 * 0x10000;
        let _ = match i % 3 {
            0 => writeln!(text, "mmap {off:#x} 0x1000 rw"),
            1 => writeln!(text, "touch {off:#x} 0x1000 w"),
            _ => writeln!(text, "munmap {off:#x} 0x1000"),
        };
    }
    text
}

fn bench_replay(c: &mut Criterion) {
    let text = simple_script();
    let steps = mmun_script::parse_script(&text).expect("script parses");
    assert_eq!(steps.len(), SCRIPT_STEPS);
    let mut group = c.benchmark_group("replay");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .throughput(Throughput::Elements(SCRIPT_STEPS as u64));
    let replayer = Replayer::new();
    group.bench_function("simple_steps", |b| {
        b.iter(|| {
            for step in &steps {
                black_box(replayer.step(step).expect("in the window"));
            }
        });
    });
    group.bench_function("parse", |b| {
        b.iter(|| mmun_script::parse_script(black_box(&text)).expect("script parses"));
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_replay(&mut c);
    c.final_summary();
}
