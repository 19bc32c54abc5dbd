//! glibc malloc tuning for `qd serve`: pins the mmap threshold once recovery is done
//! (docs/STORAGE.md, "Memory outside sled"). The one place in the workspace with unsafe
//! code: one `mallopt` call, and `mallinfo2` in the test that checks its effect.
//!
//! Why not another allocator: jemalloc (`tikv-jemallocator`, with background threads and
//! short decay) and mimalloc were measured against this in the same session, alternating
//! runs of W5 (1M jobs queued): jemalloc needed `dirty_decay_ms:0`, and ~40% more server
//! CPU, to come near 200 MiB (191-206 MiB), and stayed at 206-237 MiB with any decay that
//! kept its CPU cost; mimalloc took 360 MiB. This one call gave 177-193 MiB at no
//! measurable CPU cost. docs/PERFORMANCE.md has the figures.

/// Allocations of this size or more get their own mapping, returned to the kernel on free.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Pins glibc's mmap threshold at [`MMAP_THRESHOLD`]; `qd serve` calls it once the store is
/// recovered. Returns whether the threshold is pinned: false with another C library, when
/// the operator set glibc's own `MALLOC_MMAP_THRESHOLD_` (which then wins), or if glibc
/// refused the value.
///
/// Why: glibc raises the threshold to the size of any mapped block that is freed (up to
/// 32 MiB). Filling a queue grows the broker's tables and frees their old multi-MiB
/// buffers, and sled frees 2 MiB segment buffers; after that every block up to that size
/// comes from the heap, where freed ones leave holes glibc can neither reuse nor return.
/// With 1M jobs queued the server's RSS was 256-290 MiB with the sliding threshold and
/// 177-193 MiB with it pinned. Pinning it also pins the trim threshold at its 128 KiB
/// default, so a freed heap top is given back.
///
/// Why after recovery: the recovery scan allocates and frees large node buffers by the
/// thousand, and with a pinned threshold each became an mmap, a munmap and fresh page
/// faults: the first reserve after a restart with 1M jobs came ~0.3 s later. Recovery's
/// memory is bounded by the store's design (docs/STORAGE.md, "Memory"), not by this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn pin_mmap_threshold() -> bool {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return false;
    }
    let threshold = libc::c_int::try_from(MMAP_THRESHOLD).expect("256 KiB fits a c_int");
    // SAFETY: mallopt only sets a malloc parameter, under malloc's own lock, and takes no
    // pointer; a failure (0) leaves glibc's sliding threshold in place, which is harmless.
    #[allow(unsafe_code)]
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) };
    set == 1
}

/// Other allocators and C libraries: nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn pin_mmap_threshold() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Bytes glibc currently serves from blocks with their own mapping (its stats API).
    fn mapped_bytes() -> usize {
        // SAFETY: mallinfo2 takes nothing and returns a plain struct of counters.
        #[allow(unsafe_code)]
        let info = unsafe { libc::mallinfo2() };
        info.hblkhd
    }

    /// Regression test (issue 10): without the pin, freeing one mapped 8 MiB block raised
    /// glibc's threshold to 8 MiB, and a 1 MiB block then came from the heap (the
    /// fragmentation that cost ~60-100 MiB of RSS with 1M queued jobs). Read through glibc's
    /// own counters: mapped bytes grow by the block when it has its own mapping. Other
    /// tests of this binary allocate on other threads, so only growth is checked, never an
    /// exact figure, and a small block must not count as mapped.
    #[test]
    fn a_large_block_keeps_its_own_mapping_after_a_bigger_one_was_freed() {
        assert!(pin_mmap_threshold(), "mallopt refused the threshold");
        drop(std::hint::black_box(vec![1u8; 8 << 20]));
        let before = mapped_bytes();
        let block = std::hint::black_box(vec![1u8; 1 << 20]);
        let after = mapped_bytes();
        assert!(
            after >= before + block.len(),
            "a 1 MiB block came from the heap (mapped bytes {before} -> {after}): the \
             threshold slid"
        );
        drop(block);
    }
}
