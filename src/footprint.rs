//! Gives back the memory that only starting needed, once the agent runs: on a gateway the
//! agent's resident set is what stays taken from a 512 MiB board for months.
//!
//! Two things stay resident after start-up without being used again:
//! - heap the allocator keeps: parsing and validating a large map peaks at several times
//!   the heap the running agent needs (15 MiB against 3.5 MiB for 50 devices x 40 points,
//!   measured with heaptrack), and glibc keeps freed memory below long-lived allocations
//!   mapped; `malloc_trim` returns the free pages to the kernel;
//! - code pages of our own executable that only start-up ran (command line, config parser
//!   and validation, TLS and buffer setup): they are clean copies of the file, so they are
//!   unmapped from the process (`MADV_DONTNEED`) and stay in the page cache; whatever runs
//!   again is mapped back on its next use by a minor fault (no disk read while the page cache
//!   holds the file). Only read-only mappings of the executable with no private copy of a
//!   page are touched: a writable mapping would lose its contents, and so would the
//!   read-only one the loader wrote relocations into before protecting it (RELRO).
//!
//! Called after READY and after each reload (which parses the file again). Linux with glibc
//! only; elsewhere it does nothing.

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

/// Returns the start-up heap and code pages; logs what the resident set went from and to.
pub fn trim_after_startup() {
    let before = resident_kib();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(target_os = "linux")]
    let dropped = drop_own_code_pages();
    #[cfg(not(target_os = "linux"))]
    let dropped = 0;
    tracing::debug!(
        before_kib = before,
        after_kib = resident_kib(),
        code_ranges = dropped,
        "gave back start-up memory"
    );
}

/// Unmaps the resident pages of the executable's read-only mappings; returns how many
/// ranges were advised.
#[cfg(target_os = "linux")]
fn drop_own_code_pages() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut advised = 0;
    for (start, end) in read_only_ranges(&maps, &exe.to_string_lossy()) {
        // SAFETY: the range is a read-only private mapping of our own executable (its code
        // and constants): discarding its pages loses nothing, the next access maps the same
        // bytes back from the file.
        let done =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if done == 0 {
            advised += 1;
        }
    }
    advised
}

/// The `start..end` of every mapping of `path` without write permission and without
/// anonymous (copied-on-write) pages, from the text of /proc/self/smaps.
#[cfg(any(target_os = "linux", test))]
fn read_only_ranges(smaps: &str, path: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    // The mapping whose fields follow, if it is a candidate so far.
    let mut candidate: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(anonymous) = line.strip_prefix("Anonymous:") {
            let pristine = anonymous.trim().trim_end_matches("kB").trim() == "0";
            if let Some(range) = candidate.take().filter(|_| pristine) {
                ranges.push(range);
            }
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // A new mapping: a header line has the range, perms, offset, device, inode, path.
        candidate = (perms.as_bytes().get(1) == Some(&b'-') && fields.nth(3) == Some(path))
            .then_some((start, end));
    }
    ranges
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_mappings_without_write_permission_are_taken() {
        let mapping = |header: &str, anonymous_kib: u32| {
            format!("{header}\nSize: 4 kB\nRss: 4 kB\nAnonymous: {anonymous_kib} kB\nVmFlags: rd\n")
        };
        let maps = [
            mapping(
                "00400000-00500000 r--p 00000000 fd:01 123 /usr/bin/fieldlink",
                0,
            ),
            mapping(
                "00500000-00900000 r-xp 00100000 fd:01 123 /usr/bin/fieldlink",
                0,
            ),
            mapping(
                "00900000-00a00000 r--p 00500000 fd:01 123 /usr/bin/fieldlink",
                0,
            ),
            // RELRO: read-only now, but the loader wrote relocations into it.
            mapping(
                "00a00000-00a08000 r--p 00600000 fd:01 123 /usr/bin/fieldlink",
                32,
            ),
            mapping(
                "00a08000-00a10000 rw-p 00608000 fd:01 123 /usr/bin/fieldlink",
                0,
            ),
            mapping("00a10000-00b00000 rw-p 00000000 00:00 0 [heap]", 900),
            mapping(
                "b0000000-b0100000 r-xp 00000000 fd:01 456 /usr/lib/libc.so.6",
                0,
            ),
            mapping(
                "b0200000-b0300000 r-xp 00000000 fd:01 789 /usr/bin/fieldlink-x",
                0,
            ),
        ]
        .concat();
        assert_eq!(
            read_only_ranges(&maps, "/usr/bin/fieldlink"),
            vec![
                (0x00400000, 0x00500000),
                (0x00500000, 0x00900000),
                (0x00900000, 0x00a00000),
            ]
        );
    }

    #[test]
    fn a_process_keeps_running_on_code_mapped_back_after_the_trim() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(
            !read_only_ranges(&smaps, &exe.to_string_lossy()).is_empty(),
            "the test binary's own code mappings are found"
        );
        trim_after_startup();
        // Everything from here runs on pages faulted back in from the file.
        let again = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(!read_only_ranges(&again, &exe.to_string_lossy()).is_empty());
        assert_eq!(format!("{:.1}", 230.1f32), "230.1");
    }
}
