//! Gives back the memory that only starting needed, once the agent runs: on a gateway the
//! agent's resident set is what stays taken from a 512 MiB board for months.
//!
//! Parsing and validating a large map peaks at several times the heap the running agent
//! needs (15 MiB against 3.5 MiB for 50 devices x 40 points, measured with heaptrack), and
//! glibc keeps freed memory below long-lived allocations mapped; `malloc_trim` returns the
//! free pages to the kernel. Called after READY and after each reload (which parses the file
//! again). Linux with glibc only; elsewhere it does nothing.
//!
//! Not done: dropping the executable's start-up-only code pages (`MADV_DONTNEED` on its
//! read-only mappings) took 1.7 MiB more off the resident set, but whether a read-only
//! private mapping still holds a written page (RELRO, a swapped-out copy) can only be read
//! from /proc/self/smaps, and under qemu-user that answer was wrong and the agent crashed.

/// One malloc arena for the whole agent, set before any thread starts: glibc gives every
/// thread that allocates its own arena (the buffer's I/O thread, rustls' or SQLite's
/// allocations on it), each with its own free lists and unreturned top; with two mostly idle
/// threads that is memory held twice for nothing, and they never contend.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the start-up heap; logs what the resident set went from and to.
pub fn trim_after_startup() {
    let before = resident_kib();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(
        before_kib = before,
        after_kib = resident_kib(),
        "gave back start-up memory"
    );
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
