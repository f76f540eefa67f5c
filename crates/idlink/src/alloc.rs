//! The global allocator: the system's (glibc), except that blocks of
//! [`LARGE`] bytes and more are anonymous mappings of their own, advised
//! to use transparent huge pages, and grown by `mremap`.
//!
//! Why: at a million devices the engine's lookups wait on page walks
//! through some 300 MB of tables in 4 KiB pages (the prefetch stages were
//! 15 % of replay's samples). In 2 MiB pages those walks mostly hit the
//! TLB. Only the big tables are worth it: a huge page is resident whole,
//! so each mapping costs up to 2 MiB more than it touches, a few MiB in
//! all, where advising the whole heap (glibc's `hugetlb` tunable) cost
//! more. `mremap` grows a table without holding both copies, which
//! glibc's `realloc` of a block it did not map itself would.
//!
//! `IDLINK_HUGE_PAGES=0` turns it off (plain glibc for everything). The
//! environment is read once, when the first large block is asked for,
//! and the choice never changes, so every block is freed the way it was
//! allocated. Needs the kernel's
//! transparent huge pages in `madvise` or `always` mode; in `never` mode
//! the advice is ignored and the mappings behave as ordinary memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// Blocks of this size and more get mappings of their own.
pub const LARGE: usize = 4 << 20;

/// Page size the mappings are rounded to.
const PAGE: usize = 4096;

/// Not decided yet: the first large block decides.
const UNDECIDED: u8 = 0;
/// Large blocks are advised mappings.
const ON: u8 = 1;
/// Everything goes to the system allocator.
const OFF: u8 = 2;

/// Whether large blocks are mappings; see [`mode`].
static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// [`ON`] or [`OFF`], from `IDLINK_HUGE_PAGES` (on unless `0`, `false`,
/// `no` or `off`) the first time it is asked. Read with `getenv`, which
/// allocates nothing: this runs inside the allocator. (Nothing in idlink
/// sets environment variables, so the read cannot race a write.)
fn mode() -> u8 {
    let m = MODE.load(Ordering::Acquire);
    if m != UNDECIDED {
        return m;
    }
    // SAFETY: a NUL-terminated name; the value, if any, is a C string
    // owned by the environment and only read here.
    let value = unsafe { libc::getenv(c"IDLINK_HUGE_PAGES".as_ptr()) };
    let off = !value.is_null() && {
        // SAFETY: a non-null `getenv` result is a NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
        [&b"0"[..], b"false", b"no", b"off"]
            .iter()
            .any(|w| v.eq_ignore_ascii_case(w))
    };
    let decided = if off { OFF } else { ON };
    match MODE.compare_exchange(UNDECIDED, decided, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => decided,
        Err(other) => other,
    }
}

/// The allocator; see the module documentation.
pub struct HugePages;

/// Whether a block of `layout` is (or would be) a mapping of its own.
/// Only the size and alignment decide, and the mode never changes once a
/// large block exists, so allocation and release always agree.
fn mapped(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE && mode() == ON
}

fn rounded(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// Maps `size` bytes, zeroed, advised to use huge pages; null on failure.
unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            rounded(size),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    // SAFETY: `p` is the mapping just made; the advice is only a hint, and
    // failing to take it (huge pages off) leaves ordinary memory.
    unsafe { libc::madvise(p, rounded(size), libc::MADV_HUGEPAGE) };
    p.cast()
}

// SAFETY: small blocks are the system allocator's, unchanged. Large ones
// are page-aligned anonymous mappings (alignment up to a page is
// honoured), zeroed by the kernel, released with `munmap` of the same
// rounded length, and resized with `mremap`, which keeps the contents.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // SAFETY: see `map`; a fresh mapping is zeroed.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: `ptr` came from `map` with this size (same layout).
            unsafe { libc::munmap(ptr.cast(), rounded(layout.size())) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (whole body): the caller guarantees `ptr` is a live block
        // of `layout` and `new_size` is valid for its alignment.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(layout), mapped(new)) {
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => {
                let p = unsafe {
                    libc::mremap(
                        ptr.cast(),
                        rounded(layout.size()),
                        rounded(new_size),
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if p == libc::MAP_FAILED {
                    return std::ptr::null_mut();
                }
                // A moved or grown mapping keeps its advice; asking again
                // costs one call per growth.
                unsafe { libc::madvise(p, rounded(new_size), libc::MADV_HUGEPAGE) };
                p.cast()
            }
            (from_map, _) => {
                // Across the threshold: a new block, the contents copied.
                let p = unsafe { self.alloc(new) };
                if !p.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        if from_map {
                            libc::munmap(ptr.cast(), rounded(layout.size()));
                        } else {
                            System.dealloc(ptr, layout);
                        }
                    }
                }
                p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_grow_shrink_and_keep_their_contents() {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..(3 * LARGE as u64 / 8) {
            v.push(i);
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
        if mode() == ON {
            // A mapping of its own starts on a page; glibc's own mappings
            // start 16 bytes in.
            assert_eq!(v.as_ptr() as usize % PAGE, 0);
        }
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v, (0..10).collect::<Vec<u64>>());
        let z = vec![0u8; 2 * LARGE];
        assert!(z.iter().all(|&b| b == 0));
    }
}
