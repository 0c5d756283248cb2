//! What one system call's round trip into the kernel costs on this machine: `getpid`
//! (through `std::process::id`, which glibc does not cache), the cheapest there is, so
//! the figure is the entry and exit alone. It bounds what a server could save by making
//! fewer calls (io_uring's batches) where the bare echo server makes one `recvfrom` and
//! one `sendto` per round trip (docs/benchmarks.md, "Why an RPC call stops at 1.1x").
//!
//! ```sh
//! cargo build --release -p switchboard-bench --example syscall_cost
//! taskset -c 0 target/release/examples/syscall_cost
//! ```

use std::time::Instant;

fn main() {
    const CALLS: u32 = 5_000_000;
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut sum = 0u64;
            for _ in 0..CALLS {
                sum = sum.wrapping_add(u64::from(std::process::id()));
            }
            std::hint::black_box(sum);
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    println!(
        "a system call's round trip: {:.0} ns (median of 5 rounds of {CALLS}; {:.0} to {:.0})",
        rounds[2], rounds[0], rounds[4]
    );
}
