//! Gives back the memory that only starting needed, once the agent runs: on a gateway the
//! agent's resident set is what stays taken from a 512 MiB board for months.
//!
//! Two things stay resident after start-up without being used again:
//! - heap the allocator keeps: parsing and validating a large map peaks at several times
//!   the heap the running agent needs (15 MiB against 3.5 MiB for 50 devices x 40 points,
//!   measured with heaptrack), and glibc keeps freed memory below long-lived allocations
//!   mapped; `malloc_trim` returns the free pages to the kernel;
//! - code and constants that only start-up used (command line, config parser and
//!   validation, TLS and buffer setup): pages of the executable's and its libraries' files,
//!   mapped since they ran. They are unmapped from the process (`MADV_DONTNEED`) and stay in
//!   the page cache; what runs again is mapped back by a minor fault on its next use.
//!
//! Which ranges are safe to unmap is read from the ELF program headers the loader itself
//! used (`dl_iterate_phdr`), not from /proc: a `PT_LOAD` segment without write permission
//! holds only bytes of the file, unless the object has text relocations (then the loader
//! wrote into it; such an object is skipped) or the range lies in `PT_GNU_RELRO` (written
//! by the loader before it was made read-only; excluded). An earlier version chose the
//! ranges from /proc/self/smaps; under qemu-user that file does not tell written pages
//! apart, RELRO was dropped and the agent crashed. No range is chosen from /proc (the
//! resident set read from /proc/self/status is only logged).
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
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let released = code_pages::release();
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let released = 0;
    tracing::debug!(
        before_kib = before,
        after_kib = resident_kib(),
        released_kib = released / 1024,
        "gave back start-up memory"
    );
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod code_pages {
    use std::ffi::CStr;
    use std::ops::Range;

    // Dynamic section tags and flag (elf.h); the libc crate does not carry them.
    const DT_NULL: isize = 0;
    const DT_TEXTREL: isize = 22;
    const DT_FLAGS: isize = 30;
    const DF_TEXTREL: usize = 0x4;

    /// Unmaps the file-backed read-only segments of the executable and of every shared
    /// object loaded from a file; returns how many bytes of address space were advised.
    pub fn release() -> usize {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        // SAFETY: the callback only reads the loader's own records for the duration of
        // the call, and `data` is the `Vec` above, alive until dl_iterate_phdr returns.
        unsafe {
            libc::dl_iterate_phdr(Some(collect), (&mut ranges as *mut Vec<_>).cast());
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut advised = 0;
        for range in ranges {
            let Some(whole) = whole_pages(&range, page) else {
                continue;
            };
            // SAFETY: the range lies inside a read-only segment of a loaded object that
            // the loader mapped from its file and never wrote (see the module doc):
            // discarding its pages loses nothing, the next access maps the same bytes back.
            let done = unsafe {
                libc::madvise(
                    whole.start as *mut libc::c_void,
                    whole.len(),
                    libc::MADV_DONTNEED,
                )
            };
            if done == 0 {
                advised += whole.len();
            }
        }
        advised
    }

    /// The pages lying wholly inside `range`: a page shared with a neighbouring segment
    /// (which may be writable) is left alone.
    pub(super) fn whole_pages(range: &Range<usize>, page: usize) -> Option<Range<usize>> {
        let start = range.start.checked_add(page - 1)? / page * page;
        let end = range.end / page * page;
        (start < end).then_some(start..end)
    }

    /// The ranges of one loaded object's segments that are read-only in the file and were
    /// never written by the loader: `PT_LOAD` without `PF_W`, minus `PT_GNU_RELRO`.
    pub(super) fn read_only_ranges(
        base: usize,
        headers: impl Iterator<Item = (u32, u32, usize, usize)> + Clone,
    ) -> Vec<Range<usize>> {
        let relro: Vec<Range<usize>> = headers
            .clone()
            .filter(|&(kind, ..)| kind == libc::PT_GNU_RELRO)
            .map(|(_, _, vaddr, size)| base + vaddr..base + vaddr + size)
            .collect();
        let mut ranges = Vec::new();
        for (kind, flags, vaddr, size) in headers {
            if kind != libc::PT_LOAD || flags & libc::PF_W != 0 {
                continue;
            }
            let segment = base + vaddr..base + vaddr + size;
            let mut pieces = vec![segment];
            for written in &relro {
                pieces = pieces
                    .into_iter()
                    .flat_map(|piece| without(piece, written))
                    .collect();
            }
            ranges.extend(pieces);
        }
        ranges
    }

    /// `piece` minus `cut`: none, one or two ranges.
    fn without(piece: Range<usize>, cut: &Range<usize>) -> Vec<Range<usize>> {
        if cut.end <= piece.start || piece.end <= cut.start {
            return vec![piece];
        }
        [piece.start..cut.start, cut.end..piece.end]
            .into_iter()
            .filter(|r| r.start < r.end)
            .collect()
    }

    unsafe extern "C" fn collect(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid record and our `data` pointer.
        let (info, ranges) = unsafe { (&*info, &mut *data.cast::<Vec<Range<usize>>>()) };
        // The executable has an empty name, a library its path; anything else (the vDSO)
        // is not a plain file mapping and is left alone.
        let name = if info.dlpi_name.is_null() {
            &[][..]
        } else {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()
        };
        if !(name.is_empty() || name.starts_with(b"/")) || info.dlpi_phdr.is_null() {
            return 0;
        }
        let base = info.dlpi_addr as usize;
        // SAFETY: the loader's program headers of this object: dlpi_phnum entries.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let headers = phdrs
            .iter()
            .map(|h| (h.p_type, h.p_flags, h.p_vaddr as usize, h.p_memsz as usize));
        let dynamic = phdrs
            .iter()
            .find(|h| h.p_type == libc::PT_DYNAMIC)
            .map(|h| base + h.p_vaddr as usize);
        // SAFETY: PT_DYNAMIC of a loaded object points at its mapped dynamic section.
        if dynamic.is_some_and(|at| unsafe { has_text_relocations(at as *const usize) }) {
            return 0;
        }
        ranges.extend(read_only_ranges(base, headers));
        0
    }

    /// Whether the dynamic section at `entries` asks the loader to write into read-only
    /// segments (DT_TEXTREL, or DF_TEXTREL in DT_FLAGS).
    ///
    /// # Safety
    /// `entries` points at a mapped dynamic section, ended by DT_NULL.
    unsafe fn has_text_relocations(mut entries: *const usize) -> bool {
        loop {
            // An ElfN_Dyn is two words of the pointer width: the tag, then its value.
            // SAFETY: within the dynamic section until DT_NULL (the caller's promise).
            let (tag, value) = unsafe { (*entries as isize, *entries.add(1)) };
            match tag {
                DT_NULL => return false,
                DT_TEXTREL => return true,
                DT_FLAGS if value & DF_TEXTREL != 0 => return true,
                _ => {}
            }
            // SAFETY: as above.
            entries = unsafe { entries.add(2) };
        }
    }
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
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use code_pages::{read_only_ranges, whole_pages};

    #[test]
    fn only_read_only_load_segments_outside_relro_are_taken() {
        const R: u32 = libc::PF_R;
        const RX: u32 = libc::PF_R | libc::PF_X;
        const RW: u32 = libc::PF_R | libc::PF_W;
        let headers = [
            (libc::PT_PHDR, R, 0x40, 0x300),
            (libc::PT_LOAD, R, 0, 0x8_0000),
            (libc::PT_LOAD, RX, 0x8_0000, 0x40_0000),
            // RELRO inside the writable segment, as linkers lay it out...
            (libc::PT_LOAD, RW, 0x48_0000, 0x2_0000),
            (libc::PT_GNU_RELRO, R, 0x48_0000, 0x1_0000),
            // ...and one claimed over part of a read-only segment, which must be cut out.
            (libc::PT_GNU_RELRO, R, 0x7_0000, 0x1000),
        ];
        let ranges = read_only_ranges(0x1000_0000, headers.into_iter());
        assert_eq!(
            ranges,
            vec![
                0x1000_0000..0x1007_0000,
                0x1007_1000..0x1008_0000,
                0x1008_0000..0x1048_0000
            ]
        );
    }

    #[test]
    fn a_page_shared_with_a_neighbour_is_left_alone() {
        assert_eq!(whole_pages(&(0x1010..0x5000), 0x1000), Some(0x2000..0x5000));
        assert_eq!(whole_pages(&(0x1000..0x4fff), 0x1000), Some(0x1000..0x4000));
        assert_eq!(whole_pages(&(0x1010..0x1ff0), 0x1000), None);
    }

    #[test]
    fn releasing_the_running_code_keeps_it_running() {
        // This test binary's own code and constants go, then come back on use.
        assert!(code_pages::release() > 0);
        let text = format!("{:?}", (1..4).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(text, "[2, 4, 6]");
    }
}
